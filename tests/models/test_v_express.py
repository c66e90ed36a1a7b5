"""V-Express at the tiny config, no Ray: part shapes, V-kps from a real face mesh, the pipeline folder
round trip, what each training stage trains, the official-checkpoint converter, and a few optimiser
steps on real frames."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from facefab.models.shared.checkpoints import animatediff_keys
from facefab.models.shared.latents import PixelCodec
from facefab.models.v_express import AudioProjection, VExpressNet, VExpressPipeline, VKpsGuider, tiny
from facefab.models.v_express.config import check
from facefab.models.v_express.convert import convert, convert_extras, official_to_facefab
from facefab.models.v_express.pipeline import build_parts, speech_tokens, wav2vec2_windows
from facefab.models.v_express.v_kps_guider import draw_v_kps, posed_v_kps, v_kps_points
from facefab.training.v_express import STAGES, VExpressSystem, trainable_names

CROP = 128  # side of the test "aligned" crop video; the tiny model works at 64
N_FRAMES = 32
FPS = 25.0


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def track(shared_data, tmp_path_factory):
    """32 real frames of drive_d6 as a preprocessed track (the whole frame resized as the crop, MediaPipe
    landmarks, crop->frame transforms, crop mp4 with 16 kHz speech, AudioFeatures-style .npz)."""
    import cv2

    from facefab.audio.features import log_mel, mel_windows
    from facefab.face.mesh import FaceMesher
    from facefab.manifests.io import rows_to_table, write_table
    from facefab.media import read_audio, read_frames, write_video
    from facefab.media.arrays import save_npz

    root = tmp_path_factory.mktemp("v_express_track")
    source = read_frames(str(shared_data / "videos" / "drive_d6.mp4"), start=1.0, end=1.0 + N_FRAMES / FPS)[:N_FRAMES]
    mesher = FaceMesher()
    landmarks = np.stack([mesher(f, np.array([100, 60, 380, 420])) for f in source])
    mesher.close()
    assert np.isfinite(landmarks).all()
    scale = source.shape[1] / CROP
    inverse = np.array([[scale, 0, 0], [0, scale, 0]], np.float32)
    crops = np.stack([cv2.resize(f, (CROP, CROP), interpolation=cv2.INTER_AREA) for f in source])
    audio = read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), start=1.0, end=1.0 + N_FRAMES / FPS)
    write_video(str(root / "crop.mp4"), crops, FPS, audio=audio)
    frames = [{"clip_id": "c", "track_id": 0, "frame_index": i, "time": i / FPS, "bbox": [100, 60, 380, 420],
               "landmarks": landmarks[i].reshape(-1).tolist(), "pose": None,
               "inverse_transform": inverse.reshape(-1).tolist()} for i in range(N_FRAMES)]
    write_table(str(root / "frames.parquet"), rows_to_table(frames, "frames"))
    mel = log_mel(audio)
    save_npz(str(root / "audio.npz"), mel=mel, frame_index_map=mel_windows(N_FRAMES, FPS, len(mel), 8))
    row = {"id": "track0", "crop_uri": str(root / "crop.mp4"), "frames_uri": str(root / "frames.parquet"),
           "audio_features_uri": str(root / "audio.npz"), "fps": FPS, "crop_size": CROP}
    mesh64 = landmarks[:, :, :2] / scale * (64 / CROP)
    crops64 = np.stack([cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA) for c in crops])
    return {"row": row, "mesh64": mesh64.astype(np.float32), "crops64": crops64, "audio": audio}


def _system(stage: str, **options) -> VExpressSystem:
    system = VExpressSystem()
    system.configure(tiny(), stage=stage, options={"samples_per_clip": 2, **options})
    return system


def _batch(samples):
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


# -- parts ---------------------------------------------------------------------------------------------

def test_tiny_parts_have_the_official_roles_and_shapes():
    torch.manual_seed(0)
    guider = VKpsGuider(**tiny()["v_kps_guider"])
    images = torch.rand(2, 3, 5, 64, 64)
    features = guider(images)
    assert features.shape == (2, 32, 5, 16, 16)  # the latent grid, the UNet's first width
    assert torch.count_nonzero(features) == 0  # conv_out starts at zero, as the official zero_module
    assert [n for n, _ in guider.named_parameters()][:4] == ["conv_in.weight", "conv_in.bias", "blocks.0.weight",
                                                              "blocks.0.bias"]
    projection = AudioProjection(**tiny()["audio_projection"])
    assert projection(torch.randn(7, 20, 80)).shape == (7, 5, 32)
    with pytest.raises(ValueError, match="at most"):
        projection(torch.randn(1, 21, 80))

    net = VExpressNet.fresh(tiny())
    noisy = torch.randn(2, 3, 4, 16, 16)
    out = net(noisy, torch.tensor([10, 900]), torch.randn(2, 3, 16, 16), torch.rand(2, 3, 4, 64, 64),
              torch.randn(2, 4, 20, 80))
    assert out.shape == noisy.shape and torch.isfinite(out).all()
    assert not net.bank.tokens  # the reference tokens are dropped after the forward


def test_config_check_rejects_parts_that_do_not_fit():
    bad = tiny()
    bad["v_kps_guider"]["block_out_channels"] = [8, 16]  # 2x down, but the pixel latents are 4x smaller
    with pytest.raises(ValueError, match="downsamples"):
        check(bad)
    bad = tiny()
    bad["audio"]["pad_frames"] = 3  # 7 frames x 4 mel = 28 tokens for a projection of 20
    with pytest.raises(ValueError, match="audio features"):
        check(bad)


def test_the_denoiser_starts_as_the_image_unet():
    """Fresh audio attention and motion modules add nothing: like the official training's zero_module."""
    parts = build_parts(tiny())
    state = parts["denoising_unet"].state_dict()
    audio_out = [k for k in state if ".attentions." in k and "attn2.to_out.0" in k]
    motion_out = [k for k in state if ".motion_modules." in k and k.split(".")[-2] == "proj_out"]
    assert audio_out and motion_out
    assert all(torch.count_nonzero(state[k]) == 0 for k in audio_out + motion_out)


# -- V-kps ---------------------------------------------------------------------------------------------

def test_v_kps_follow_the_face_and_the_pose(track):
    mesh = track["mesh64"][0]
    kps = v_kps_points(mesh)
    left, right, nose = kps
    assert left[0] < nose[0] < right[0] and nose[1] > max(left[1], right[1])
    assert 0 < kps.min() and kps.max() < 64

    still = posed_v_kps(mesh, 64, None, num_frames=3)
    assert still.shape == (3, 3, 2) and np.allclose(still, kps)
    same = posed_v_kps(mesh, 64, np.zeros((2, 3)))
    np.testing.assert_allclose(same, still[:2], atol=1e-3)  # no offset from the reference pose: its own kps
    turned = posed_v_kps(mesh, 64, np.array([[20.0, 0, 0], [0, 0, 20.0]]))
    assert turned[0, 2, 0] - kps[2, 0] > 3.0  # yaw > 0 turns the nose to the image right
    assert abs(turned[0, 2, 1] - kps[2, 1]) < 1.5
    tilt = [np.degrees(np.arctan2(*(k[1] - k[0])[::-1])) for k in (kps, turned[1])]
    assert 15 < tilt[1] - tilt[0] < 25  # roll > 0 turns the eye line clockwise in the image

    image = draw_v_kps(64, kps)
    x, y = np.round(kps).astype(int).T
    assert tuple(image[y[0], x[0]]) == (255, 0, 0) and tuple(image[y[1], x[1]]) == (0, 255, 0)
    assert tuple(image[y[2], x[2]]) == (0, 0, 255) and image[0, 0].sum() == 0


# -- the pipeline ----------------------------------------------------------------------------------------

def test_pipeline_generates_and_round_trips_its_folder(track, tmp_path):
    torch.manual_seed(0)
    config = tiny()
    config["sampling"]["context_frames"] = 4  # two overlapping windows over 6 frames
    config["sampling"]["context_overlap"] = 2
    net = VExpressNet.fresh(config)
    with torch.no_grad():  # give the zero-initialised outputs a value so every part matters
        for name, p in net.named_parameters():
            if torch.count_nonzero(p) == 0 and p.ndim > 1:
                p.normal_(0, 0.02)
    pipe = VExpressPipeline(net, PixelCodec(4), config)
    args = (track["crops64"][0], track["mesh64"][0], track["audio"], FPS, 6)
    out = pipe(*args, steps=2, seed=3)
    assert out.shape == (6, 64, 64, 3) and out.dtype == np.uint8 and out.std() > 1

    pipe.save_pretrained(str(tmp_path))
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "VExpressPipeline"
    assert set(index) - {"_class_name"} == {"reference_net", "denoising_unet", "v_kps_guider", "audio_projection"}
    loaded = VExpressPipeline.from_pretrained(str(tmp_path), device="cpu", dtype="fp32")
    assert loaded.size == 64 and loaded.config == check(config)
    for name, part in pipe.net.parts().items():
        theirs = getattr(loaded.net, name).state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in part.state_dict().items()), name
    np.testing.assert_array_equal(loaded(*args, steps=2, seed=3), out)
    assert not np.array_equal(loaded(*args, steps=2, seed=4), out)
    with pytest.raises(ValueError, match="reference must be"):
        loaded(track["crops64"][0][:32], *args[1:])


def test_speech_tokens_match_between_training_and_inference(track):
    """The training clips' mel tokens (from the preprocess .npz) and the pipeline's (from raw audio) agree."""
    clip = _system("temporal")._load_clip(track["row"], None)
    ours = speech_tokens(tiny(), track["audio"], FPS, N_FRAMES)
    assert ours.shape == clip["speech"].shape == (N_FRAMES, 20, 80)
    assert np.corrcoef(ours.ravel(), clip["speech"].ravel())[0, 1] > 0.9
    assert abs(float(ours.mean())) < 1.5 and 0.3 < float(ours.std()) < 2  # standardised


def test_wav2vec2_windows_follow_the_official_layout():
    hidden = torch.arange(40, dtype=torch.float32)[:, None].repeat(1, 3)
    windows = wav2vec2_windows(hidden, num_frames=10, pad_frames=2)
    assert windows.shape == (10, 10, 3)
    assert torch.count_nonzero(windows[0, :4]) == 0 and torch.count_nonzero(windows[-1, -4:]) == 0
    assert torch.equal(windows[2, 4:6], windows[3, 2:4])  # consecutive frames share their middle states


# -- training ---------------------------------------------------------------------------------------------

def test_samples_of_a_track(track):
    system = _system("temporal", num_frames=4, flip_rate=1.0)
    clip = system._load_clip(track["row"], None)
    np.testing.assert_allclose(clip["kps"], v_kps_points(track["mesh64"]), atol=1e-3)  # crop px -> 64 px
    assert clip["crops"].shape == (N_FRAMES, 64, 64, 3) and clip["valid"].all()
    samples = system.make_samples(track["row"], None)
    assert len(samples) == 2
    shapes = {k: v.shape for k, v in samples[0].items()}
    assert shapes == {"reference": (64, 64, 3), "target": (4, 64, 64, 3), "kps": (4, 3, 2), "speech": (4, 20, 80),
                      "lip_box": (4, 4)}
    for s in samples:  # mirrored: the first keypoint is still the image-left eye, the nose stays between
        assert (s["kps"][:, 0, 0] < s["kps"][:, 2, 0]).all() and (s["kps"][:, 2, 0] < s["kps"][:, 1, 0]).all()
        assert (0 <= s["lip_box"]).all() and (s["lip_box"] <= 1).all()
        assert (s["lip_box"][:, 0] < s["lip_box"][:, 2]).all() and (s["lip_box"][:, 1] < s["lip_box"][:, 3]).all()
        start = int(np.argmin([np.abs(clip["speech"][i:i + 4] - s["speech"]).max() for i in range(N_FRAMES - 3)]))
        np.testing.assert_array_equal(s["speech"], clip["speech"][start:start + 4])
        np.testing.assert_array_equal(s["target"], clip["crops"][start:start + 4, :, ::-1])
        np.testing.assert_allclose(s["kps"][:, 2, 0], 63 - clip["kps"][start:start + 4, 2, 0], atol=1e-4)


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_trains_only_its_modules(track, stage):
    system = _system(stage, num_frames=min(STAGES[stage]["num_frames"], 3))
    torch.manual_seed(0)
    model = system.build_model(tiny())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == trainable_names(model, STAGES[stage]["train"])
    expected_parts = {"single": {"reference_net", "denoising_unet", "v_kps_guider"}, "temporal": {"denoising_unet"},
                      "audio": {"denoising_unet", "audio_projection"}}[stage]
    assert {n.split(".")[0] for n in trained} == expected_parts
    motion = {n for n in trained if ".motion_modules." in n}
    audio_attention = {n for n in trained if n.startswith("denoising_unet.") and ".attentions." in n
                       and (".attn2." in n or ".norm2." in n)}
    assert bool(motion) == (stage == "temporal") and bool(audio_attention) == (stage == "audio")
    if stage == "single":
        assert not any(n.startswith("reference_net.up_blocks.1.") for n in trained)  # the unused last block

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    batch = _batch(system.make_samples(track["row"], None))
    for _ in range(2):
        loss, _ = system.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trained  # nothing frozen moved
    assert {n.split(".")[0] for n in changed} == expected_parts


def test_a_few_steps_lower_the_loss_on_real_frames(track):
    system = _system("single", samples_per_clip=8, flip_rate=0.0)
    torch.manual_seed(0)
    model = system.build_model(tiny())
    batch = _batch(system.make_samples(track["row"], None))

    def held_loss() -> float:
        torch.manual_seed(123)  # the same noise, timesteps and dropout every time
        with torch.no_grad():
            return float(system.loss(model, batch)[0])

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    first = held_loss()
    for step in range(12):
        torch.manual_seed(step)
        loss, logs = system.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert np.isfinite(logs["mse"])
    assert held_loss() < 0.7 * first


def test_configure_checks_stages_options_and_latents():
    system = VExpressSystem()
    assert system.export_group == "v-express" and system.stage == "audio"  # the default stage is the last
    with pytest.raises(ValueError, match="no stage"):
        system.configure(tiny(), stage="everything")
    with pytest.raises(ValueError, match="unknown v-express option"):
        system.configure(tiny(), options={"frames": 3})
    with pytest.raises(ValueError, match="VAE"):
        system.configure(None)  # paper size encodes with SD's VAE
    from facefab.models.v_express import official

    with pytest.raises(ValueError, match="mel"):
        system.configure(official(), options={"vae": "somewhere"})


def test_a_later_stage_starts_from_the_earlier_export(tmp_path):
    first = _system("single")
    torch.manual_seed(1)
    trained = first.build_model(tiny())
    first.export(trained, str(tmp_path))
    follow = _system("temporal", init=str(tmp_path))
    model = follow.build_model(tiny())
    state = trained.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    other = tiny()
    other["unet"] = {**other["unet"], "layers_per_block": 2}
    with pytest.raises(ValueError, match="differs"):
        _system("audio", init=str(tmp_path)).build_model(other)


# -- the official checkpoint ----------------------------------------------------------------------------------

def test_official_names_map_onto_ours():
    assert official_to_facefab(
        "denoising_unet",
        "up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_out.0.weight",
    ) == "up_blocks.3.motion_modules.2.transformer_blocks.0.attn2.to_out.0.weight"
    assert official_to_facefab(
        "denoising_unet", "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.ff_norm.bias",
    ) == "mid_block.motion_modules.0.transformer_blocks.0.norm3.bias"
    assert official_to_facefab(
        "denoising_unet", "down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks"
                          ".0.pos_encoder.pe") == "down_blocks.0.motion_modules.1.transformer_blocks.0.pos_embed.pe"
    spatial = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert official_to_facefab("denoising_unet", spatial) == spatial


def test_converter_places_official_tensors_and_reports_the_rest(tmp_path):
    from diffusers import AutoencoderKL
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Model

    torch.manual_seed(0)
    parts = build_parts(tiny())
    for p in parts["denoising_unet"].parameters():  # no zero tensors: a placed tensor is recognisable
        torch.nn.init.normal_(p.data, 0, 0.1)
    official = tmp_path / "model_ckpts" / "v-express"
    official.mkdir(parents=True)
    denoiser = parts["denoising_unet"].state_dict()
    spatial = {k: v for k, v in denoiser.items() if ".motion_modules." not in k}
    # the official separate reference attention of every spatial transformer block (modules/attention.py
    # TemporalBasicTransformerBlock: attn1_5 and norm1_5 of attn1 / norm1's size), at the tiny widths
    for key, shape in {"down_blocks.0.attentions.0.transformer_blocks.0.attn1_5.to_q.weight": (32, 32),
                       "down_blocks.0.attentions.0.transformer_blocks.0.norm1_5.bias": (32,),
                       "mid_block.attentions.0.transformer_blocks.0.attn1_5.to_k.weight": (64, 64),
                       "up_blocks.1.attentions.1.transformer_blocks.0.attn1_5.to_out.0.weight": (32, 32),
                       "up_blocks.1.attentions.1.transformer_blocks.0.norm1_5.weight": (32,)}.items():
        assert tuple(spatial[key].shape) == shape, key
    reference_only = {k for k in spatial if ".attn1_5." in k or ".norm1_5." in k}
    assert len(reference_only) == 4 * 7  # 4 spatial blocks (down 0, mid, up 1 x2): norm w/b, q, k, v, out w/b
    # one positional encoding per AnimateDiff attention block
    motion = {name: v for k, v in denoiser.items() if ".motion_modules." in k for name in animatediff_keys(k)}
    torch.save(spatial, official / "denoising_unet.bin")
    torch.save(motion, official / "motion_module.bin")
    for name in ("reference_net", "v_kps_guider", "audio_projection"):
        torch.save(parts[name].state_dict(), official / f"{name}.bin")
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, sample_size=32)
    (tmp_path / "model_ckpts" / "sd-vae-ft-mse").mkdir()
    vae.save_pretrained(str(tmp_path / "model_ckpts" / "sd-vae-ft-mse"), safe_serialization=False)
    w2v_config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4,
                                num_conv_pos_embedding_groups=2, vocab_size=8)
    ctc = Wav2Vec2ForCTC(w2v_config)
    ctc.save_pretrained(str(tmp_path / "model_ckpts" / "wav2vec2-base-960h"), safe_serialization=False)

    dst = tmp_path / "converted"
    report = convert(str(tmp_path), str(dst), config=tiny())
    assert report["unmapped"] == []
    assert report["missing"] == {} and report["extras"] == {}  # tiny: pixel latents, mel features
    joined = convert(str(tmp_path), str(tmp_path / "joined"), config=tiny(reference_attention="joined"))
    assert sorted(joined["unmapped"]) == sorted(f"denoising_unet.bin:{k}" for k in reference_only)
    assert report["mapped"] == sum(len(p.state_dict()) for p in parts.values())
    assert not [f for _, _, files in os.walk(dst) for f in files if f.endswith((".bin", ".pt", ".pth"))]

    pipe = VExpressPipeline.from_pretrained(str(dst), device="cpu", dtype="fp32")
    for name, part in parts.items():
        theirs = getattr(pipe.net, name).state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in part.state_dict().items()), name
    assert pipe.net.denoising_unet.config.reference_attention == "separate"
    g = torch.Generator().manual_seed(3)
    args = (torch.randn(1, 3, 2, 16, 16, generator=g), torch.tensor([500]), torch.randn(1, 3, 16, 16, generator=g),
            torch.rand(1, 3, 2, 64, 64, generator=g), torch.randn(1, 2, 20, 80, generator=g))
    with torch.no_grad():
        out = pipe.net(*args)
        other = pipe.net(*args[:2], torch.randn(1, 3, 16, 16, generator=g), *args[3:])
    assert out.shape == args[0].shape and torch.isfinite(out).all()
    assert (out - other).abs().mean() > 1e-4  # the reference reaches the output through attn1_5
    assert convert_extras(str(official), str(dst)) == {"vae": True, "audio_encoder": True}  # the released layout
    loaded_vae = AutoencoderKL.from_pretrained(str(dst / "vae"), use_safetensors=True)
    assert all(torch.equal(v, loaded_vae.state_dict()[k]) for k, v in vae.state_dict().items())
    encoder = Wav2Vec2Model.from_pretrained(str(dst / "audio_encoder"), use_safetensors=True)
    ours = encoder.state_dict()
    assert all(torch.equal(v, ours[k.removeprefix("wav2vec2.")]) for k, v in ctc.state_dict().items()
               if k.startswith("wav2vec2.") and k.removeprefix("wav2vec2.") in ours)

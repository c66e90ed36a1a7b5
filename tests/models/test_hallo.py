"""Hallo at the tiny config, without Ray: the parts' shapes, the masks of a real face, the pipeline's
windows and conditions, save/load, stage freezing, the converter of the official net.pth layout, and a
few optimiser steps on real frames."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from facefab.face.mesh import largest_face_landmarks
from facefab.media import read_audio, read_frames, read_image
from facefab.models.hallo import FaceLocator, HalloNet, HalloPipeline, ImageProjModel, tiny
from facefab.models.hallo.convert import convert
from facefab.models.hallo.masks import region_boxes, region_masks
from facefab.models.hallo.pipeline import load_parts, speech_features, wav2vec2_states
from facefab.models.shared.latents import PixelCodec, to_unit
from facefab.models.shared.sampling import make_scheduler, training_target
from facefab.training.hallo import HalloSystem, trainable_names

SIZE = tiny()["size"]


@pytest.fixture(scope="module")
def portrait(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """A real portrait at the tiny size and its MediaPipe mesh (478, 2) in its pixels."""
    import cv2

    image = read_image(str(shared_data / "portraits" / "hallo_2.jpg"))
    side = min(image.shape[:2])
    image = image[:side, :side]
    points = largest_face_landmarks(image[None])[0][:, :2] * (SIZE / side)
    assert np.isfinite(points).all()
    return cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA), points.astype(np.float32)


@pytest.fixture(scope="module")
def speech(shared_data) -> np.ndarray:
    return read_audio(str(shared_data / "audio" / "speech_hallo1.wav"))


def _awake(net: HalloNet, seed: int = 0) -> HalloNet:
    """Give the zero-initialised outputs (face locator, motion and audio modules) random weights, as
    training would, so every condition reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in net.named_modules():
            if re.search(r"(motion_modules\.\d+\.proj_out|audio_modules\.\d+\.proj_out|zero_conv_\w+|"
                         r"face_locator\.conv_out)$", name):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * 0.2)
    return net


def _pipeline(seed: int = 0) -> HalloPipeline:
    """A tiny pipeline with 4-frame windows (the paper's 16 cost more than these tests need)."""
    config = tiny()
    config["sampling"]["clip_frames"] = 4
    torch.manual_seed(seed)
    return HalloPipeline(_awake(HalloNet.fresh(config), seed), PixelCodec(config["latent"]["factor"]), config)


# -- parts --------------------------------------------------------------------------------------------------------

def test_parts_have_the_official_names_and_tiny_shapes():
    locator = FaceLocator(**tiny()["face_locator"])
    mask = torch.zeros(2, 3, SIZE, SIZE)
    mask[:, :, 16:48, 16:48] = 1
    out = locator(mask)
    assert out.shape == (2, 32, SIZE // 4, SIZE // 4) and not out.abs().any()  # zero-initialised output
    assert locator(mask[:, :, None].repeat(1, 1, 3, 1, 1)).shape == (2, 32, 3, SIZE // 4, SIZE // 4)
    assert {k.split(".")[0] for k in locator.state_dict()} == {"conv_in", "blocks", "conv_out"}
    proj = ImageProjModel(**tiny()["image_proj"])
    assert proj(torch.randn(2, 512)).shape == (2, 4, 32) and set(proj.state_dict()) >= {"proj.weight", "norm.weight"}
    net = HalloNet.fresh(tiny())
    assert set(net.parts()) == {"reference_unet", "denoising_unet", "face_locator", "imageproj", "audioproj"}
    assert len(net.motion_frames.names) == 4  # down 0, mid, up 1 (two): one per spatial attention


def test_region_masks_of_a_real_face(portrait):
    _, points = portrait
    face_box, lip_box = region_boxes(points, SIZE)
    assert (face_box[:2] <= lip_box[:2]).all() and (lip_box[2:] <= face_box[2:]).all()  # the lips inside the face
    face_w = face_box[2] - face_box[0]
    assert 0.4 * SIZE < face_w <= SIZE and lip_box[1] > (face_box[1] + face_box[3]) / 2  # lips in the lower half
    masks = region_masks(face_box, lip_box, SIZE)
    pose, face, lip = masks
    assert masks.shape == (3, 64, 64) and masks.min() >= 0 and masks.max() <= 1
    cy, cx = (lip_box[1::2].mean() / SIZE * 64).astype(int), (lip_box[0::2].mean() / SIZE * 64).astype(int)
    assert lip[cy, cx] > 0.9 and pose[cy, cx] < 0.3 and pose[0, 0] > 0.9 and face.max() > 0.5
    # a clip's boxes hold every frame's
    moved = points + np.array([6.0, 3.0], np.float32)
    union_face, _ = region_boxes(np.stack([points, moved]), SIZE)
    assert (union_face[:2] <= face_box[:2]).all() and (union_face[2:] >= face_box[2:]).all()
    assert (union_face != face_box).any()


def test_speech_features_mel_and_wav2vec2(speech):
    config = tiny()
    mel = speech_features(config, speech[:32000], 25.0, 50)
    assert mel.shape == (50, 5, 4, 80) and mel.dtype == np.float32 and abs(float(mel.mean())) < 2
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    encoder = Wav2Vec2Model(Wav2Vec2Config(hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                           intermediate_size=32, conv_dim=(8,) * 7, num_conv_pos_embeddings=8,
                                           num_conv_pos_embedding_groups=2)).eval()
    states = wav2vec2_states(encoder, speech[:32000], 50)
    assert states.shape == (50, 3, 16)  # one state per video frame and layer (the official "all" features)
    config = {**config, "audio": {"features": "wav2vec2"},
              "audio_proj": {**config["audio_proj"], "blocks": 3, "channels": 16}}
    windows = speech_features(config, speech[:32000], 25.0, 50, encoder)
    assert windows.shape == (50, 5, 3, 16)
    assert np.allclose(windows[10, 2], states[10].numpy(), atol=1e-5)  # centred on its frame
    assert np.allclose(windows[0, 0], windows[0, 2], atol=1e-5)  # edge frames repeated


# -- the pipeline ---------------------------------------------------------------------------------------------

def test_generates_in_continued_windows_and_follows_its_conditions(portrait, speech):
    reference, points = portrait
    pipe = _pipeline()
    frames = pipe(reference, points, speech, 25.0, 7, steps=2, seed=3)
    assert frames.shape == (7, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert frames.std(axis=0).mean() > 1  # not one frame repeated
    calls = []
    again = pipe(reference, points, speech, 25.0, 7, steps=2, seed=3, progress=lambda i, n: calls.append((i, n)))
    assert np.array_equal(frames, again) and calls == [(1, 2), (2, 2)]  # deterministic; 2 windows of 4
    silent = pipe(reference, points, np.zeros_like(speech), 25.0, 7, steps=2, seed=3)
    assert np.abs(silent.astype(int) - frames).mean() > 0.5  # the speech drives the frames
    embedding = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    other = pipe(reference, points, speech, 25.0, 7, steps=2, seed=3, face_embedding=embedding)
    assert np.abs(other.astype(int) - frames).mean() > 0.5
    with pytest.raises(ValueError, match="reference must be"):
        pipe(reference[:32], points, speech, 25.0, 4)


def test_motion_frames_reach_the_temporal_modules():
    torch.manual_seed(0)
    net = _awake(HalloNet.fresh(tiny())).eval()
    latents, tokens = torch.randn(1, 3, 4, 16, 16), torch.zeros(1, 4, 32)
    features = torch.zeros(1, 32, 16, 16)
    reference = torch.randn(1, 3, 16, 16)
    outs = []
    with torch.no_grad():
        for motion in (torch.randn(1, 3, 2, 16, 16), torch.randn(1, 3, 2, 16, 16), None):
            net.write_reference(reference, motion, tokens)
            assert all(t.shape[1] == 16 * 16 for n, t in net.bank.tokens.items() if "down_blocks.0" in n)  # reference only
            outs.append(net.denoise(latents, torch.tensor(500), tokens, features))
            net.clear()
    assert outs[0].shape == latents.shape
    assert (outs[0] - outs[1]).abs().mean() > 1e-3 and (outs[0] - outs[2]).abs().mean() > 1e-3


def test_save_and_load_give_identical_frames(portrait, speech, tmp_path):
    reference, points = portrait
    pipe = _pipeline(seed=1)
    pipe.save_pretrained(str(tmp_path / "hallo"))
    assert {p.name for p in (tmp_path / "hallo").iterdir()} == {
        "reference_unet", "denoising_unet", "face_locator", "imageproj", "audioproj", "pipeline.json",
        "model_index.json"}
    loaded = HalloPipeline.from_pretrained(str(tmp_path / "hallo"), device="cpu", dtype="fp32")
    a = pipe(reference, points, speech, 25.0, 6, steps=2, seed=5)
    b = loaded(reference, points, speech, 25.0, 6, steps=2, seed=5)
    assert np.array_equal(a, b)


# -- training -------------------------------------------------------------------------------------------------

def _system(stage: str, **options) -> HalloSystem:
    system = HalloSystem()
    system.configure(tiny(), stage, options)
    return system


def test_stages_freeze_what_the_paper_freezes():
    stage1, stage2 = _system("stage1"), _system("stage2")
    assert stage2.stage == HalloSystem().stage == "stage2" and stage1.options["num_frames"] == 1
    net1, net2 = stage1.build_model(stage1.config), stage2.build_model(stage2.config)
    trained1 = {n for n, p in net1.named_parameters() if p.requires_grad}
    trained2 = {n for n, p in net2.named_parameters() if p.requires_grad}
    assert not trained1 & trained2
    assert any(n.startswith("reference_unet.down_blocks") for n in trained1)
    assert not any(n.startswith(("reference_unet.up_blocks.1.", "reference_unet.conv_out")) for n in trained1)
    assert any(n.startswith("denoising_unet.down_blocks.0.attentions") for n in trained1)
    assert {n.split(".")[0] for n in trained1} == {"reference_unet", "denoising_unet", "face_locator", "imageproj"}
    assert not any(".motion_modules." in n or ".audio_modules." in n for n in trained1)
    assert all(".motion_modules." in n or ".audio_modules." in n or n.startswith("audioproj.") for n in trained2)
    assert any(".audio_modules." in n for n in trained2) and any(n.startswith("audioproj.") for n in trained2)
    with pytest.raises(ValueError, match="no stage"):
        _system("stage3")
    with pytest.raises(ValueError, match="unknown hallo option"):
        _system("stage2", nope=1)
    with pytest.raises(ValueError, match="unknown parameter group"):
        trainable_names(net1, ["everything"])


def test_a_stage2_step_trains_only_its_parts(shared_data):
    system = _system("stage2", num_frames=4)
    net = system.build_model(system.config)
    frames = read_frames(str(shared_data / "videos" / "drive_d6.mp4"), end=0.4, size=(SIZE, SIZE))
    rng = np.random.default_rng(0)
    batch = {"reference": torch.from_numpy(frames[None, 0]), "target": torch.from_numpy(frames[None, 4:8]),
             "motion": torch.from_numpy(frames[None, 2:4]),
             "face_region": torch.ones(1, SIZE, SIZE, dtype=torch.uint8),
             "speech": torch.from_numpy(rng.standard_normal((1, 4, 5, 4, 80)).astype(np.float32)),
             "region_masks": torch.rand(1, 3, 64, 64)}
    loss, logs = system.loss(net, batch)
    loss.backward()
    assert torch.isfinite(loss) and logs["mse"] > 0
    grads = {n for n, p in net.named_parameters() if p.grad is not None}
    assert grads == {n for n, p in net.named_parameters() if p.requires_grad}
    assert any(".motion_modules." in n for n in grads)


def test_a_few_optimiser_steps_lower_the_loss_on_real_frames(shared_data):
    """Stage 1 on real frames (a fixed batch and noise): the model learns to redraw them."""
    torch.manual_seed(0)
    system = _system("stage1")
    net = system.build_model(system.config)
    frames = read_frames(str(shared_data / "videos" / "drive_d10.mp4"), end=1.0, size=(SIZE, SIZE))
    codec, scheduler = PixelCodec(4), make_scheduler()
    targets = codec.encode(to_unit(frames[[5, 20]]))[:, :, None]  # (2, 3, 1, 16, 16)
    reference = codec.encode(to_unit(frames[[0, 0]]))
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(targets.shape, generator=g)
    timesteps = torch.tensor([300, 700])
    noisy = scheduler.add_noise(targets, noise, timesteps)
    goal = training_target(scheduler, targets, noise, timesteps)
    region = torch.zeros(2, 1, SIZE, SIZE)
    region[:, :, 8:56, 12:52] = 1

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(net(noisy, timesteps, reference, None, region, torch.zeros(2, 512)), goal)

    optimiser = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    with torch.no_grad():
        start = float(loss())
    for _ in range(12):
        optimiser.zero_grad()
        loss().backward()
        optimiser.step()
    with torch.no_grad():
        end = float(loss())
    assert end < 0.7 * start, (start, end)


# -- the converter --------------------------------------------------------------------------------------------

_ANIMATEDIFF = ((".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."), (".norm1.", ".norms.0."),
                (".norm2.", ".norms.1."), (".norm3.", ".ff_norm."))


def _official_state(net: HalloNet) -> dict[str, torch.Tensor]:
    """`net` keyed as the official Net's net.pth: AnimateDiff motion-module names (VanillaTemporalModule ->
    temporal_transformer, attention_blocks, norms, ff_norm, a pos_encoder per attention block); the rest,
    the audio modules included, keeps its names."""
    state = {}
    for key, value in net.state_dict().items():
        if ".motion_modules." in key:
            head, _, tail = key.partition(".motion_modules.")
            index, _, rest = tail.partition(".")
            rest = f".{rest}"
            if rest.endswith(".pos_embed.pe"):
                for block in (0, 1):
                    pe = rest.replace(".pos_embed.pe", f".attention_blocks.{block}.pos_encoder.pe")
                    state[f"{head}.motion_modules.{index}.temporal_transformer{pe}"] = value.clone()
                continue
            for ours, theirs in _ANIMATEDIFF:
                rest = rest.replace(ours, theirs)
            key = f"{head}.motion_modules.{index}.temporal_transformer{rest}"
        state[key] = value.clone()
    return state


# official names (hallo/models/unet_3d_blocks.py, transformer_3d.py, attention.py
# AudioTemporalBasicTransformerBlock) and their shapes at the tiny config: audio tokens of 32, every
# audio module 32 wide but the mid block's (64: its in_channels), geglu feed-forward of 4x
_OFFICIAL_AUDIO = {
    "down_blocks.0.audio_modules.0.norm.weight": (32,),
    "down_blocks.0.audio_modules.0.proj_in.weight": (32, 32, 1, 1),
    "down_blocks.0.audio_modules.0.transformer_blocks.0.attn1.to_q.weight": (32, 32),
    "down_blocks.0.audio_modules.0.transformer_blocks.0.attn2_0.to_k.weight": (32, 32),
    "down_blocks.0.audio_modules.0.transformer_blocks.0.attn2_2.to_out.0.bias": (32,),
    "down_blocks.0.audio_modules.0.transformer_blocks.0.zero_conv_full.weight": (32, 32, 1, 1),
    "mid_block.audio_modules.0.transformer_blocks.0.zero_conv_face.bias": (64,),
    "mid_block.audio_modules.0.transformer_blocks.0.attn2_1.to_v.weight": (64, 32),
    "mid_block.audio_modules.0.transformer_blocks.0.ff.net.0.proj.weight": (512, 64),
    "up_blocks.1.audio_modules.1.transformer_blocks.0.zero_conv_lip.weight": (32, 32, 1, 1),
    "up_blocks.1.audio_modules.1.transformer_blocks.0.norm2.weight": (32,),
    "up_blocks.1.audio_modules.1.proj_out.weight": (32, 32, 1, 1),
}


def test_converter_places_the_official_layout_and_reports_the_rest(tmp_path):
    torch.manual_seed(0)
    official = _awake(HalloNet.fresh(tiny()))
    with torch.no_grad():
        for p in official.parameters():
            p.add_(0.01)  # nothing left at its initial value
    state = _official_state(official)
    for key, shape in _OFFICIAL_AUDIO.items():
        assert tuple(state[f"denoising_unet.{key}"].shape) == shape, key
    assert not any(k.endswith(".attn2.to_q.weight") for k in state if ".audio_modules." in k)  # all stacked
    state["reference_control_writer.bank"] = torch.zeros(1)  # something that is no part
    src = tmp_path / "pretrained_models" / "hallo"
    src.mkdir(parents=True)
    torch.save(state, str(src / "net.pth"))
    report = convert(str(tmp_path), str(tmp_path / "converted"), config=tiny())
    assert report["unmapped"] == ["reference_control_writer.bank"]
    assert report["missing"] == {} and report["extras"] == {"vae": False, "audio_encoder": False}
    assert report["mapped"] == len(official.state_dict())
    assert not any(p.name.endswith((".pth", ".bin")) for p in (tmp_path / "converted").rglob("*"))
    parts = load_parts(str(tmp_path / "converted"))
    for name, part in parts.items():
        ours = official.parts()[name].state_dict()
        for key, value in part.state_dict().items():
            assert torch.equal(value, ours[key]), (name, key)
    # a folder of the older "simple" audio block cannot take the official audio modules, and says so
    simple = convert(str(tmp_path), str(tmp_path / "simple"), config={**tiny(), "audio_block": "simple"})
    assert {k for k in simple["unmapped"] if ".audio_modules." in k} == {k for k in state if ".audio_modules." in k}
    pipe = HalloPipeline.from_pretrained(str(tmp_path / "converted"), device="cpu", dtype="fp32")
    assert pipe.size == SIZE
    net = pipe.net
    g = torch.Generator().manual_seed(2)
    args = (torch.randn(1, 3, 2, 16, 16, generator=g), torch.tensor([500]), torch.randn(1, 3, 16, 16, generator=g),
            torch.randn(1, 3, 2, 16, 16, generator=g), torch.ones(1, 1, SIZE, SIZE), torch.randn(1, 512, generator=g))
    speech = torch.randn(1, 2, 5, 4, 80, generator=g)
    masks = torch.zeros(1, 3, 64, 64)
    masks[:, 0] = 1
    masks[:, 2, 40:56, 20:44] = 1  # a lip box
    with torch.no_grad():
        out = net(*args, speech=speech, region_masks=masks)
        silent = net(*args, speech=torch.zeros_like(speech), region_masks=masks)
        unconverted = official(*args, speech=speech, region_masks=masks)
    assert out.shape == args[0].shape and torch.isfinite(out).all()
    assert torch.allclose(out, unconverted, atol=1e-5)  # the official weights, wired the same
    assert (out - silent).abs().mean() > 1e-4  # the converted audio modules drive the output

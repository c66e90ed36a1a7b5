"""Generation runtime (windows, checkpoints), the registry and the MyTalk models on real media."""

from __future__ import annotations

import argparse
import itertools
import json
import os

import numpy as np
import pytest
import torch

from facefab.models.mytalk import MyTalkMotion, MyTalkPipeline, MyTalkRenderer, tiny
from facefab.models.shared.windows import blend_windows, window_spans
from facefab.models.weights import CheckpointError, load_model, resolve_checkpoint
from facefab.training.catalog import export_untrained
from facefab.training.mytalk import MyTalkMotionSystem, MyTalkRenderSystem

S = 128  # crop side of the test "aligned" crops
N_FRAMES = 16
FPS = 30.0


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest single-threaded on a small shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- temporal windows ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,window,overlap", [(1, 8, 2), (8, 8, 2), (9, 8, 2), (50, 8, 3), (37, 10, 0)])
def test_window_spans_cover_with_overlap(n, window, overlap):
    spans = window_spans(n, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(e - s == min(window, n) for s, e in spans)
    assert all(nxt[0] <= prev[1] - overlap for prev, nxt in itertools.pairwise(spans))


def test_window_spans_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        window_spans(10, 4, 4)


def test_blend_windows_is_exact_for_consistent_windows_and_seamless_otherwise():
    n, window, overlap = 41, 10, 4
    spans = window_spans(n, window, overlap)
    signal = np.random.default_rng(0).normal(size=(n, 3, 2))
    np.testing.assert_allclose(blend_windows(n, spans, [signal[s:e] for s, e in spans]), signal, atol=1e-6)
    # windows that disagree (a constant level each): the cross-fade turns each unit jump into steps
    # of 1/overlap at most, spread over the shared frames
    levels = blend_windows(n, spans, [np.full((e - s, 2), float(i)) for i, (s, e) in enumerate(spans)])
    steps = np.abs(np.diff(levels[:, 0]))
    assert steps.max() <= 1.0 / overlap + 1e-6
    assert levels[0, 0] == 0 and levels[-1, 0] == len(spans) - 1


# -- checkpoints -------------------------------------------------------------------------------------------

def _tiny_motion():
    torch.manual_seed(0)
    return MyTalkMotion(**tiny()["motion"]).eval()


def _motion_inputs(t=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, t, 17, 80, generator=g) * 3 - 6, torch.rand(1, 4, 136, generator=g)


@pytest.mark.s3
def test_resolve_checkpoint_downloads_an_s3_folder_once(s3_root, tmp_path):
    import fsspec

    uri, opts = s3_root
    model = _tiny_motion()
    model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    fs = fsspec.filesystem("s3", **opts)
    fs.put(str(tmp_path / "ckpt"), f"{uri[5:]}/ckpt", recursive=True)
    cache = tmp_path / "cache"
    local = resolve_checkpoint(f"{uri}/ckpt", opts, cache_dir=str(cache))
    assert sorted(os.listdir(local)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert resolve_checkpoint(f"{uri}/ckpt", opts, cache_dir=str(cache)) == local
    assert [p.name for p in cache.iterdir()] == [os.path.basename(local)]  # no temp folder left behind
    loaded = load_model(MyTalkMotion, f"{uri}/ckpt", opts, device="cpu", cache_dir=str(cache))
    with torch.no_grad():
        assert torch.equal(loaded(*_motion_inputs()), model(*_motion_inputs()))
    # a remote folder with pickled weights only is refused before anything is downloaded
    fs.pipe(f"{uri[5:]}/pickled/config.json", b"{}")
    fs.pipe(f"{uri[5:]}/pickled/diffusion_pytorch_model.bin", b"not loaded")
    with pytest.raises(CheckpointError, match="pickled"):
        resolve_checkpoint(f"{uri}/pickled", opts, cache_dir=str(cache))


def test_load_model_refuses_pickle_only_folder(tmp_path):
    model = _tiny_motion()
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(CheckpointError, match="only has pickled weights"):
        load_model(MyTalkMotion, str(tmp_path), device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(str(tmp_path / "missing"))


def test_tiny_models_round_trip_identically(tmp_path):
    motion = _tiny_motion()
    torch.manual_seed(0)
    renderer = MyTalkRenderer(**tiny()["renderer"]).eval()
    motion.save_pretrained(tmp_path / "m")
    renderer.save_pretrained(tmp_path / "r")
    motion2 = load_model(MyTalkMotion, str(tmp_path / "m"), device="cpu")
    renderer2 = load_model(MyTalkRenderer, str(tmp_path / "r"), device="cpu")
    g = torch.Generator().manual_seed(2)
    size = renderer.config.image_size
    images = (torch.rand(1, 3, size, size, generator=g) * 2 - 1, torch.rand(1, 3, size, size, generator=g),
              (torch.rand(1, 1, size, size, generator=g) > 0.5).float(),
              torch.rand(1, 3, 3, size, size, generator=g) * 2 - 1)
    with torch.no_grad():
        assert torch.equal(motion(*_motion_inputs()), motion2(*_motion_inputs()))
        for a, b in zip(renderer(*images), renderer2(*images)):
            assert torch.equal(a, b)
    assert renderer2.config.channel_mults == list(tiny()["renderer"]["channel_mults"])


# -- real media: a preprocessed track ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def track(shared_data, tmp_path_factory):
    """16 real frames of drive_d6 as a preprocessed track: centred crops (here the whole 480 px frame
    resized to S), MediaPipe landmarks in source pixels, crop->frame transforms, crop mp4 with 16 kHz
    speech from speech_hallo1.wav, AudioFeatures-style .npz."""
    import cv2

    from facefab.audio.features import log_mel, mel_windows
    from facefab.face.mesh import FaceMesher
    from facefab.manifests.io import rows_to_table, write_table
    from facefab.media import read_audio, read_frames, write_video
    from facefab.media.arrays import save_npz

    root = tmp_path_factory.mktemp("track")
    source = read_frames(str(shared_data / "videos" / "drive_d6.mp4"), start=2.0, end=2.0 + N_FRAMES / FPS)
    assert len(source) == N_FRAMES
    mesher = FaceMesher()
    landmarks = np.stack([mesher(f, np.array([100, 60, 380, 420])) for f in source])
    mesher.close()
    scale = source.shape[1] / S
    inverse = np.array([[scale, 0, 0], [0, scale, 0]], np.float32)  # crop -> source frame
    crops = np.stack([cv2.resize(f, (S, S), interpolation=cv2.INTER_AREA) for f in source])
    audio = read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), start=1.0, end=1.0 + N_FRAMES / FPS)
    write_video(str(root / "source.mp4"), source, FPS)
    write_video(str(root / "crop.mp4"), crops, FPS, audio=audio)
    frames = [{"clip_id": "c", "track_id": 0, "frame_index": i, "time": i / FPS, "bbox": [100, 60, 380, 420],
               "landmarks": landmarks[i].reshape(-1).tolist(), "pose": None,
               "inverse_transform": inverse.reshape(-1).tolist()} for i in range(N_FRAMES)]
    write_table(str(root / "frames.parquet"), rows_to_table(frames, "frames"))
    mel = log_mel(audio)
    save_npz(str(root / "audio.npz"), mel=mel, frame_index_map=mel_windows(N_FRAMES, FPS, len(mel), 8))
    row = {"id": "track0", "crop_uri": str(root / "crop.mp4"), "frames_uri": str(root / "frames.parquet"),
           "audio_features_uri": str(root / "audio.npz"), "fps": FPS, "crop_size": S, "video_uri": str(root / "source.mp4"),
           "start": 0.0, "end": N_FRAMES / FPS}
    return {"row": row, "root": root, "crop_landmarks": landmarks / scale, "audio": audio}


def _batch(samples):
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def _overfit(system, samples, steps, lr):
    torch.manual_seed(0)
    model = system.build_model(system.default_config()).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batch = _batch(samples)
    losses = []
    for _ in range(steps):
        loss, logs = system.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["loss"])
    return model, losses


def test_motion_system_samples_and_overfit(track):
    system = MyTalkMotionSystem(tiny=True, window=8)
    samples = system.make_samples(track["row"], None)
    assert len(samples) == 2
    shapes = {k: v.shape for k, v in samples[0].items()}
    assert shapes == {"mel": (8, 17, 80), "ref_landmarks": (4, 136), "offsets": (8, 37, 2), "weight": (8,)}
    assert np.all(np.isfinite(samples[0]["mel"])) and samples[0]["mel"].std() > 0.5
    # without the .npz the mel comes from the crop video's own audio, the same features
    row = {**track["row"], "audio_features_uri": None}
    own = system.make_samples(row, None)
    assert np.corrcoef(own[0]["mel"].ravel(), samples[0]["mel"].ravel())[0, 1] > 0.9
    _, losses = _overfit(system, samples[:1], steps=40, lr=3e-3)
    assert losses[-1] < 0.5 * losses[0], losses


def test_render_system_samples_and_overfit(track):
    system = MyTalkRenderSystem(tiny=True, samples_per_clip=2, min_ref_gap=4)
    samples = system.make_samples(track["row"], None)
    assert len(samples) == 2
    shapes = {k: (v.shape, v.dtype) for k, v in samples[0].items()}
    h = tiny()["renderer"]["image_size"]
    assert shapes == {"masked": ((3, h, h), np.uint8), "sketch": ((3, h, h), np.uint8), "mask": ((1, h, h), np.uint8),
                      "refs": ((3, 3, h, h), np.uint8), "target": ((3, h, h), np.uint8)}
    mask = samples[0]["mask"][0] > 0
    assert 0.05 < mask.mean() < 0.6  # the lips + lower jaw, not the whole box
    assert np.all(samples[0]["masked"][:, mask] == 0) and samples[0]["sketch"].max() > 200
    _, losses = _overfit(system, samples[:1], steps=30, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0], losses


def test_pipeline_on_real_crops_changes_only_the_mouth(track, tmp_path):
    from facefab.media import read_frames
    from facefab.models.shared.speech import audio_mel_windows

    out_dir = str(tmp_path / "mytalk")
    for system in (MyTalkMotionSystem(tiny=True), MyTalkRenderSystem(tiny=True)):
        torch.manual_seed(0)
        system.export(system.build_model(system.default_config()), out_dir)
    assert json.loads((tmp_path / "mytalk" / "model_index.json").read_text())["renderer"][1] == "MyTalkRenderer"
    pipe = MyTalkPipeline.from_pretrained(out_dir, device="cpu", window=8, overlap=3)
    crops = read_frames(track["row"]["crop_uri"])
    mel = audio_mel_windows(track["audio"], N_FRAMES, FPS, 17)
    out = pipe.generate(crops, track["crop_landmarks"], mel)
    assert out.frames.shape == crops.shape and out.frames.dtype == np.uint8
    assert out.landmarks.shape == (N_FRAMES, 37, 2)
    untouched = out.alpha == 0
    assert np.array_equal(out.frames[untouched], crops[untouched])
    assert untouched[:, : S // 2].all()  # the upper half of the face (eyes, nose) is never touched
    mouth = out.alpha > 0.99
    assert mouth.any(axis=(1, 2)).all()
    assert np.abs(out.frames[mouth].astype(int) - crops[mouth]).mean() > 1  # the lips were re-drawn
    assert np.array_equal(pipe(crops, track["crop_landmarks"], mel), out.frames)


@pytest.fixture(scope="module")
def short_pair(shared_data, tmp_path_factory):
    """1.2 s of drive_d6 at 256 px and 1.2 s of other speech: the smallest real dub job."""
    from facefab.media import read_audio, read_frames, write_audio, write_video

    folder = tmp_path_factory.mktemp("pair")
    video, audio = str(folder / "v.mp4"), str(folder / "a.wav")
    write_video(video, read_frames(str(shared_data / "videos" / "drive_d6.mp4"), start=3.0, end=4.2,
                                   size=(256, 256)), 30.0)
    write_audio(audio, read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), start=1.0, end=2.2), 16000)
    return video, audio


def _implemented_generators() -> list[str]:
    from facefab.models import registry

    return ["weightfree"] + [s.name for s in registry.GENERATORS.values() if s.status == "implemented"]


@pytest.mark.parametrize("name", _implemented_generators())
def test_every_generator_writes_the_synthetic_tag_and_the_watermark(name, short_pair, shared_data, tmp_path,
                                                                     monkeypatch):
    """Every registered generator (and the weight-free default) runs through its task's pipeline on a
    short real clip, and what it writes carries the container tag and the invisible watermark."""
    from facefab.media import read_frames, read_metadata
    from facefab.media.provenance import detect_watermark, read_tag
    from facefab.models import registry
    from facefab.operators.base import RunContext
    from facefab.pipelines import animate, dub, makeup, swap
    from facefab.pipelines.engine import run_local
    from facefab.pipelines.face_edit import face_edit_inputs

    monkeypatch.delenv(registry.env_var(name) if name != "weightfree" else "FACEFAB_CHECKPOINT_MYTALK", raising=False)
    checkpoint, task = None, "dub"
    if name != "weightfree":
        spec = registry.get(name)
        task = spec.task
        assert task in ("dub", "animate", "makeup", "swap"), f"add {spec.task}'s pipeline to this test"
        torch.manual_seed(0)  # the same untrained weights every run: this test is about the writer's marks
        checkpoint = export_untrained(spec.trainable[0], str(tmp_path / "ckpt"))
    if task == "dub":
        config = dub.DubConfig(model=name, checkpoint=checkpoint, score=False, device="cpu")
        video, audio = short_pair
        ops, inputs = dub.build_operators(config), dub.dub_inputs(video=video, audio=audio)
    elif task in ("makeup", "swap"):
        video, _ = short_pair
        config = (makeup.MakeupJobConfig(model=name, checkpoint=checkpoint, device="cpu", max_duration=1.0)
                  if task == "makeup" else
                  swap.SwapJobConfig(model=name, checkpoint=checkpoint, device="cpu", max_duration=1.0, steps=2))
        ops = (makeup if task == "makeup" else swap).build_operators(config)
        inputs = face_edit_inputs(task, None, video, str(shared_data / "portraits" / "lp_s1.jpg"))
    else:
        # pasted back into the portrait: an untrained model's crop is saturated noise, in which no
        # watermark survives; the marks are the writer's, whatever the pixels
        video, audio = short_pair
        driven = "video_uri" in registry.get(name).inputs
        inputs = animate.animate_inputs(reference=str(shared_data / "portraits" / "hallo_3.jpg"),
                                        **({"driving": video} if driven else {"audio": audio}))
        settings = {} if driven else {"min_speech_seconds": 0.1}
        config = animate.config_class(inputs)(model=name, checkpoint=checkpoint, device="cpu", steps=2,
                                               paste_back=True, max_duration=1.0, **settings)
        ops = animate.build_operators(config)
    if name != "weightfree":
        assert any(type(op) is registry.load_operator(name) for op in ops)
    (row,) = run_local(ops, inputs, RunContext(str(tmp_path / "out")))
    assert row["status"] == "ok", row["error"]
    assert row["model"] == name
    tag = read_tag(read_metadata(row["out_uri"]))
    assert tag is not None and tag["facefab:model"] == name
    # an untrained diffusion model's crop is saturated noise that changes every frame; the mark is still read
    # against the expected codeword far beyond chance even when the noise keeps the payload from a blind read
    mark = detect_watermark(read_frames(row["out_uri"])[:30])
    assert mark.found or mark.p_value < 1e-6, mark


# -- registry and `facefab models` ----------------------------------------------------------------------------

def test_registry_and_models_command(monkeypatch, capsys):
    from facefab.jobs.commands import models
    from facefab.models import registry

    assert len(registry.GENERATORS) == 10
    assert {s.task for s in registry.GENERATORS.values()} == set(registry.TASKS)
    assert all(spec.status == "implemented" for spec in registry.GENERATORS.values())  # all ten are built
    assert registry.load_operator("beautyrec").__name__ == "ApplyMakeup"
    assert registry.load_operator("mytalk").__name__ == "LipSync"
    monkeypatch.delenv("FACEFAB_CHECKPOINT_MYTALK", raising=False)
    assert not registry.checkpoint_configured("mytalk")
    assert registry.checkpoint_configured("mytalk", {"models": {"mytalk": {"checkpoint": "s3://b/m"}}})
    monkeypatch.setenv("FACEFAB_CHECKPOINT_FACE_VID2VID", "/ckpt/fv2v")
    assert registry.checkpoint_for("face-vid2vid") == "/ckpt/fv2v"

    parser = argparse.ArgumentParser()
    models.add_parser(parser.add_subparsers())
    args = parser.parse_args(["models", "--json"])
    assert args.func(args) == 0
    table = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert table["face-vid2vid"]["checkpoint_configured"] and not table["mytalk"]["checkpoint_configured"]
    args = parser.parse_args(["models"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "mytalk" in text and "implemented" in text and "FACEFAB_CHECKPOINT_MYTALK" in text

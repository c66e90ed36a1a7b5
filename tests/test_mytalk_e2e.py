"""MyTalk end to end on real talking clips: `facefab preprocess` -> `facefab train mytalk-motion`
(2 workers, DeepSpeed ZeRO-2 on CPU) -> `facefab train mytalk-render` -> `facefab dub --model mytalk`
loading the shared export CKPT/mytalk/ that both training runs filled.

The heavy chain runs once per module (about 2.5 min on 2 cores): two 4 s cuts (with their audio) of
the shared drive_d6 / drive_d10 videos are preprocessed, both stages train a few dozen steps of the
tiny preset, and one 2 s dub is made with the result. The small tests at the end need no Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facefab.jobs.cli import main
from facefab.manifests import read_manifest
from facefab.media import probe, read_audio, read_frames, write_video
from facefab.models.mytalk import MyTalkMotion, MyTalkPipeline, MyTalkRenderer, tiny
from facefab.models.mytalk.pipeline import save_pipeline_part
from facefab.operators.track_row import read_frame_table
from facefab.training.mytalk import MyTalkMotionSystem, MyTalkRenderSystem, clip_mel_windows
from facefab.training.runtime import (
    TrainConfig,
    _merge_upload_dir,
    configure_system,
    load_system,
    read_summary,
    resolve_model_config,
)

CLIPS = ("drive_d6", "drive_d10")  # talking heads with an audio track; 4 s of each
SECONDS = 4.0
MOTION_STEPS, RENDER_STEPS = 60, 30


def _mean(values) -> float:
    return float(np.mean(values))


# -- the heavy chain ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory, shared_data, ray_local) -> str:
    """`facefab preprocess` over two 4 s talking clips: one ok face track each."""
    clips = tmp_path_factory.mktemp("mytalk_clips")
    for name in CLIPS:
        src = str(shared_data / "videos" / f"{name}.mp4")
        fps = probe(src).fps
        frames = read_frames(src, start=0.0, end=SECONDS)
        audio = read_audio(src, start=0.0, end=SECONDS)
        write_video(str(clips / f"{name}.mp4"), frames, fps, audio=audio, audio_rate=16000)
    root = str(tmp_path_factory.mktemp("mytalk_data") / "root")
    assert main(["preprocess", str(clips), "--out", root, "--no-progress"]) == 0
    rows = read_manifest(root).to_pylist()
    assert sorted(r["status"] for r in rows) == ["ok", "ok"], [r.get("error") for r in rows]
    return root


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> dict:
    """Both stages trained with the same --out: CKPT/<run>/ for each, CKPT/mytalk/ shared."""
    ckpt = str(tmp_path_factory.mktemp("mytalk_ckpt") / "ckpt")
    common = ["--data", data_root, "--out", ckpt, "--preset", "tiny", "--val-clips", "0", "--lr", "3e-3",
              "--batch-size", "4", "--log-every", "20", "--no-progress"]
    # 20-frame windows: 5 motion samples per clip (the tiny model memorises them within the run)
    assert main(["train", "mytalk-motion", *common, "--workers", "2", "--cpus-per-worker", "0.5",
                 "--zero-stage", "2", "--max-steps", str(MOTION_STEPS), "--checkpoint-every", "30",
                 "--system-options", '{"window": 20}']) == 0
    assert main(["train", "mytalk-render", *common, "--workers", "1", "--max-steps", str(RENDER_STEPS),
                 "--checkpoint-every", str(RENDER_STEPS), "--system-options", '{"samples_per_clip": 8}']) == 0
    runs = {p.name.split("-root-")[0]: p for p in Path(ckpt).iterdir() if (p / "summary.json").exists()}
    assert sorted(runs) == ["mytalk-motion", "mytalk-render"], sorted(runs)
    return {"ckpt": ckpt, "group": str(Path(ckpt) / "mytalk"),
            "summaries": {name: read_summary(str(path)) for name, path in runs.items()}}


@pytest.fixture(scope="module")
def dubbed(trained, data_root, shared_data, tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp("mytalk_dub"))
    video = read_manifest(data_root).to_pylist()[0]["video_uri"]
    assert main(["dub", "--video", video, "--audio", str(shared_data / "audio" / "speech_hallo1.wav"),
                 "--model", "mytalk", "--checkpoint", trained["group"], "--out", out,
                 "--max-duration", "2", "--no-progress"]) == 0
    (row,) = read_manifest(out).to_pylist()
    return row


@pytest.mark.slow
def test_train_mytalk_trains_both_stages_with_fitted_workers_and_the_dub_loads_them(data_root, shared_data,
                                                                                    tmp_path):
    """`facefab train mytalk` (the name `facefab models` shows) runs both stages in order into
    CKPT/mytalk/; --workers 2 without --cpus-per-worker fits the 2-core machine."""
    ckpt = tmp_path / "ckpt"
    assert main(["train", "mytalk", "--data", data_root, "--out", str(ckpt), "--preset", "tiny", "--workers", "2",
                 "--max-steps", "6", "--val-clips", "0", "--no-progress", "--system-options",
                 '{"mytalk-motion": {"window": 20}, "mytalk-render": {"samples_per_clip": 4}}']) == 0
    runs = {p.name.split("-root-")[0]: read_summary(str(p)) for p in ckpt.iterdir() if (p / "summary.json").exists()}
    assert sorted(runs) == ["mytalk-motion", "mytalk-render"]
    assert all(s["status"] == "finished" and s["step"] == 6 and s["world_size"] == 2 for s in runs.values())
    assert (ckpt / "mytalk" / "motion").is_dir() and (ckpt / "mytalk" / "renderer").is_dir()
    out = tmp_path / "dub"
    video = read_manifest(data_root).to_pylist()[0]["video_uri"]
    assert main(["dub", "--video", video, "--audio", str(shared_data / "audio" / "speech_hallo1.wav"),
                 "--model", "mytalk", "--checkpoint", str(ckpt / "mytalk"), "--out", str(out),
                 "--max-duration", "1", "--no-progress", "--score", "false"]) == 0
    (row,) = read_manifest(str(out)).to_pylist()
    assert row["status"] == "ok" and row["model"] == "mytalk"


@pytest.mark.slow
def test_e2e_motion_stage_learns_on_two_zero2_workers(trained):
    s = trained["summaries"]["mytalk-motion"]
    assert s["status"] == "finished" and s["step"] == MOTION_STEPS and s["world_size"] == 2
    assert s["strategy"] == "deepspeed" and s["deepspeed_config"]["zero_optimization"]["stage"] == 2
    assert s["replicas_in_sync"] and s["train_clips"] == 2 and s["model_config"]["d_model"] == 32  # tiny
    assert s["checkpoints"] == [30, 60]
    losses = [h["loss"] for h in s["history"]]
    first, last = _mean(losses[:10]), _mean(losses[-10:])
    assert last < 0.85 * first, (first, last, losses)
    assert s["group_export_uri"] == trained["group"]


@pytest.mark.slow
def test_e2e_render_stage_learns(trained):
    s = trained["summaries"]["mytalk-render"]
    assert s["status"] == "finished" and s["step"] == RENDER_STEPS and s["model_config"]["image_size"] == 32
    losses = [h["loss"] for h in s["history"]]
    first, last = _mean(losses[:10]), _mean(losses[-10:])
    assert last < 0.8 * first, (first, last, losses)
    assert s["group_export_uri"] == trained["group"]


@pytest.mark.slow
def test_e2e_shared_export_holds_both_trained_stages(trained, data_root):
    from safetensors.torch import load_file

    group = Path(trained["group"])
    index = json.loads((group / "model_index.json").read_text())
    assert index["motion"][1] == "MyTalkMotion" and index["renderer"][1] == "MyTalkRenderer"
    pipe = MyTalkPipeline.from_pretrained(str(group), device="cpu", dtype=torch.float32, window=20, overlap=5)
    # the shared folder holds exactly what each run exported (the renderer run left motion/ alone)
    for part, model in (("motion", pipe.motion), ("renderer", pipe.renderer)):
        run = "mytalk-motion" if part == "motion" else "mytalk-render"
        exported = load_file(str(Path(trained["summaries"][run]["export_uri"]) / part
                                 / "diffusion_pytorch_model.safetensors"))
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in exported.items())

    # and it generates differently from freshly initialised models of the same config
    row = next(r for r in read_manifest(data_root).to_pylist())
    track = read_frame_table(row["frames_uri"])
    n = 24
    crops = read_frames(row["crop_uri"])[:n]
    landmarks = track.landmarks_in_crop()[:n]
    mel = clip_mel_windows(row, None, track.frame_index[:n], pipe.motion.config.mel_window)
    torch.manual_seed(0)
    fresh = MyTalkPipeline(MyTalkMotion(**tiny()["motion"]), MyTalkRenderer(**tiny()["renderer"]), window=20, overlap=5)
    ours, theirs = pipe.generate(crops, landmarks, mel), fresh.generate(crops, landmarks, mel)
    assert np.abs(ours.landmarks - theirs.landmarks).max() > 1e-3  # the motion head is zero at init
    assert np.abs(ours.frames.astype(int) - theirs.frames).max() > 10


@pytest.mark.slow
def test_e2e_dub_loads_the_trained_checkpoint(trained, dubbed):
    from facefab.media.provenance import verify_file

    row = dubbed
    assert row["status"] == "ok", row["error"]
    assert row["model"] == "mytalk" and row["checkpoint"] == trained["group"]
    assert row["output_has_audio"] and row["watermark_found"] and row["synthetic_tag"]
    info = probe(row["out_uri"])
    assert info.has_audio and abs(info.duration - 2.0) < 0.1
    report = verify_file(row["out_uri"])
    assert report.watermark.found and report.tag["facefab:model"] == "mytalk"


# -- small: presets, options, the merged export on S3 ---------------------------------------------------

@pytest.mark.parametrize("name", ["mytalk-motion", "mytalk-render"])
def test_presets_configure_the_samples_too(name):
    system = load_system(name)
    part = "motion" if name == "mytalk-motion" else "renderer"
    assert system.presets["tiny"] == tiny()[part] and system.export_group == "mytalk"
    cfg = TrainConfig(system=name, preset="tiny")
    model_config = resolve_model_config(system, cfg)
    configure_system(system, cfg, model_config)
    assert system.config == tiny()[part]  # make_samples builds tiny-sized samples (refs, image size)
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_model_config(system, TrainConfig(system=name, preset="huge"))
    with pytest.raises(ValueError, match="no stages"):
        configure_system(system, TrainConfig(system=name, stage="full"), model_config)
    with pytest.raises(ValueError, match="unknown .* option"):
        system.configure(options={"nope": 1})


def test_motion_window_and_stride_options():
    system = MyTalkMotionSystem()
    system.configure(options={"window": 20, "stride": 5})
    assert (system.window, system.stride) == (20, 5)
    render = MyTalkRenderSystem()
    render.configure(options={"samples_per_clip": "4"})
    assert render.samples_per_clip == 4


def _part(tmp_path: Path, part: str) -> str:
    """A stage's export folder as system.export writes it (one part + model_index.json)."""
    out = tmp_path / f"export-{part}"
    configs = tiny()
    model = MyTalkMotion(**configs["motion"]) if part == "motion" else MyTalkRenderer(**configs["renderer"])
    save_pipeline_part(model, str(out), part)
    return str(out)


@pytest.mark.s3
def test_group_export_merges_stages_on_s3(s3_root, tmp_path):
    root, opts = s3_root
    group = f"{root}/ckpt/mytalk"
    _merge_upload_dir(_part(tmp_path, "motion"), group, opts)
    _merge_upload_dir(_part(tmp_path, "renderer"), group, opts)
    _merge_upload_dir(_part(tmp_path, "motion"), group, opts)  # a retrained stage 1: renderer/ stays
    pipe = MyTalkPipeline.from_pretrained(group, opts, device="cpu", cache_dir=str(tmp_path / "cache"))
    assert pipe.renderer.config.image_size == tiny()["renderer"]["image_size"]
    from facefab.manifests.storage import read_bytes

    index = json.loads(read_bytes(f"{group}/model_index.json", opts))
    assert set(index) == {"_class_name", "motion", "renderer"}

"""Hallo end to end on the shared talking clips (`talking_root`): `facefab train hallo --stage stage1` on
2 workers (DeepSpeed ZeRO-2 on CPU), then the default stage2 continuing it (`init`: the shared export
CKPT/hallo/), then `HalloPipeline.from_pretrained(CKPT/hallo)` animates a reference crop with speech.
The chain runs once per module (tiny preset, a few dozen steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from facefab.jobs.cli import main
from facefab.media import read_audio, read_frames
from facefab.models.hallo import HalloNet, HalloPipeline, tiny
from facefab.models.shared.latents import PixelCodec
from facefab.operators.track_row import read_frame_table
from facefab.training.runtime import read_summary

STAGE1_STEPS, STAGE2_STEPS = 30, 4
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def trained(talking_root, tmp_path_factory) -> dict:
    ckpt = tmp_path_factory.mktemp("hallo_ckpt") / "ckpt"
    common = ["--data", talking_root, "--out", str(ckpt), "--preset", "tiny", "--val-clips", "0", "--lr", "1e-3",
              "--workers", "2", "--cpus-per-worker", "0.5", "--zero-stage", "2", "--log-every", "10", "--no-progress"]
    assert main(["train", "hallo", "--stage", "stage1", *common, "--max-steps", str(STAGE1_STEPS), "--batch-size", "2",
                 "--checkpoint-every", str(STAGE1_STEPS), "--system-options", '{"samples_per_clip": 16}']) == 0
    stage1 = read_summary(str(next(ckpt.glob("hallo-stage1-*"))))
    stage1_export = {part: load_file(str(Path(stage1["export_uri"]) / part / WEIGHTS))
                     for part in ("denoising_unet", "reference_unet")}
    options = {"init": str(ckpt / "hallo"), "num_frames": 8, "samples_per_clip": 2}
    assert main(["train", "hallo", *common, "--max-steps", str(STAGE2_STEPS), "--batch-size", "1",
                 "--checkpoint-every", str(STAGE2_STEPS), "--system-options", json.dumps(options)]) == 0
    runs = [p for p in ckpt.iterdir() if (p / "summary.json").exists()]
    stage2 = read_summary(str(next(p for p in runs if not p.name.startswith("hallo-stage1-"))))
    return {"group": ckpt / "hallo", "stage1": stage1, "stage2": stage2, "stage1_export": stage1_export}


@pytest.mark.slow
def test_stage1_learns_on_two_zero2_workers(trained):
    s = trained["stage1"]
    assert s["status"] == "finished" and s["step"] == STAGE1_STEPS and s["world_size"] == 2
    assert s["strategy"] == "deepspeed" and s["deepspeed_config"]["zero_optimization"]["stage"] == 2
    assert s["replicas_in_sync"] and s["train_clips"] == 2 and s["model_config"]["size"] == tiny()["size"]
    losses = [h["loss"] for h in s["history"]]
    first, last = float(np.mean(losses[:8])), float(np.mean(losses[-8:]))
    assert last < 0.85 * first, (first, last, losses)
    assert s["group_export_uri"] == str(trained["group"])


@pytest.mark.slow
def test_stage2_continues_stage1_and_trains_only_its_parts(trained):
    s = trained["stage2"]
    assert s["status"] == "finished" and s["step"] == STAGE2_STEPS and s["stage"] == ""  # the default stage
    assert all(np.isfinite(h["loss"]) for h in s["history"])
    before = trained["stage1_export"]
    after = {part: load_file(str(trained["group"] / part / WEIGHTS)) for part in before}
    assert all(torch.equal(v, before["reference_unet"][k]) for k, v in after["reference_unet"].items())
    spatial = [k for k in after["denoising_unet"] if ".motion_modules." not in k and ".audio_modules." not in k]
    assert all(torch.equal(after["denoising_unet"][k], before["denoising_unet"][k]) for k in spatial)
    motion = [k for k in after["denoising_unet"] if ".motion_modules." in k and k.endswith("proj_out.weight")]
    assert any(not torch.equal(after["denoising_unet"][k], before["denoising_unet"][k]) for k in motion)
    audio = [k for k in after["denoising_unet"] if ".audio_modules." in k and k.endswith("proj_out.weight")]
    assert any(after["denoising_unet"][k].abs().sum() > 0 for k in audio)  # left zero-init


@pytest.mark.slow
def test_export_loads_and_animates_a_reference_crop_with_speech(trained, talking_clips, shared_data):
    index = json.loads((trained["group"] / "model_index.json").read_text())
    assert index["_class_name"] == "HalloPipeline" and index["denoising_unet"][1] == "AudioUNetMotionModel"
    pipe = HalloPipeline.from_pretrained(str(trained["group"]), device="cpu", dtype="fp32")
    size = pipe.size
    row = talking_clips["drive_d6"]
    reference = read_frames(row["crop_uri"], end=0.2, size=(size, size))[0]
    points = read_frame_table(row["frames_uri"]).landmarks_in_crop()[0, :, :2] * (size / row["crop_size"])
    speech = read_audio(str(shared_data / "audio" / "speech_hallo1.wav"))
    frames = pipe(reference, points, speech, 25.0, 18, steps=4, seed=0)
    assert frames.shape == (18, size, size, 3) and frames.dtype == np.uint8
    assert frames.std() > 10 and frames.std(axis=0).mean() > 1  # an image, and it moves
    # a few dozen steps already pull the frames towards the reference (a fresh model draws noise)
    torch.manual_seed(0)
    fresh = HalloPipeline(HalloNet.fresh(tiny()), PixelCodec(tiny()["latent"]["factor"]), tiny())
    untrained = fresh(reference, points, speech, 25.0, 18, steps=4, seed=0)

    def distance(video: np.ndarray) -> float:
        return float(np.abs(video.astype(float) - reference).mean())

    assert distance(frames) < 0.8 * distance(untrained), (distance(frames), distance(untrained))

"""MOFA-Video end to end on real talking clips: `facefab train mofa-video` (2 workers, DeepSpeed ZeRO-2 on
CPU, tiny preset: every part from scratch) over the shared preprocess root, then the export
CKPT/mofa-video/ loads as a MofaVideoPipeline, and `facefab animate` runs it from a driving video
(`--driving`) and along trajectories (`--trajectories`, a preprocess flow artifact), the system named by
the checkpoint's model_index.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facefab.jobs.cli import main
from facefab.manifests import read_manifest
from facefab.models.mofa_video import MofaVideoPipeline
from facefab.training.runtime import read_summary

STEPS = 40


@pytest.fixture(scope="module")
def trained(talking_root, tmp_path_factory) -> dict:
    ckpt = tmp_path_factory.mktemp("mofa_video_ckpt") / "ckpt"
    assert main(["train", "mofa-video", "--data", talking_root, "--out", str(ckpt), "--preset", "tiny",
                 "--workers", "2", "--cpus-per-worker", "0.5", "--zero-stage", "2", "--val-clips", "0",
                 "--max-steps", str(STEPS), "--batch-size", "4", "--lr", "2e-3", "--checkpoint-every", str(STEPS),
                 "--log-every", "10", "--no-progress",
                 "--system-options", '{"samples_per_clip": 16, "uncond_ratio": 0.0, "max_frames": 60}']) == 0
    (run,) = [p for p in ckpt.iterdir() if (p / "summary.json").exists()]
    return {"ckpt": ckpt, "group": ckpt / "mofa-video", "summary": read_summary(str(run))}


@pytest.mark.slow
def test_training_learns_on_two_zero2_workers_and_the_export_loads(trained):
    s = trained["summary"]
    assert s["status"] == "finished" and s["step"] == STEPS and s["world_size"] == 2
    assert s["strategy"] == "deepspeed" and s["deepspeed_config"]["zero_optimization"]["stage"] == 2
    assert s["replicas_in_sync"] and s["train_clips"] == 2 and s["model_config"]["size"] == 64
    losses = [h["loss"] for h in s["history"]]
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    assert last < 0.8 * first, (first, last, losses)
    group = trained["group"]
    index = json.loads((group / "model_index.json").read_text())
    assert index["_class_name"] == "MofaVideoPipeline"
    assert set(index) == {"_class_name", "unet", "controlnet", "cmp", "image_encoder"}
    pipe = MofaVideoPipeline.from_pretrained(str(group), device="cpu", dtype="fp32")
    assert pipe.size == 64 and pipe.net.controlnet.controlnet_mid_block.weight.abs().sum() > 0  # the adapter trained


@pytest.mark.slow
def test_facefab_animate_drives_a_portrait_with_the_trained_checkpoint(trained, animate_driving):
    """`facefab animate --driving VIDEO --checkpoint CKPT/mofa-video`: one frame per driving frame."""
    animate_driving(str(trained["group"]), "mofa-video", 0.6)


@pytest.mark.slow
def test_facefab_animate_moves_a_portrait_along_trajectories_with_the_checkpoint(trained, talking_clips, shared_data,
                                                                                  tmp_path):
    """`facefab animate --trajectories FLOW.npz --checkpoint CKPT/mofa-video`: the neural trajectory path
    (MofaVideoPipeline.animate_tracks on the portrait's aligned crop), one frame per track frame."""
    from facefab.media import probe

    track = talking_clips["drive_d6"]
    out = str(tmp_path / "out")
    assert main(["animate", "--reference", str(shared_data / "portraits" / "hallo_3.jpg"), "--trajectories",
                 track["flow_uri"], "--checkpoint", str(trained["group"]), "--out", out, "--fps", "10",
                 "--max-duration", "0.7", "--size", "96", "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    (row,) = read_manifest(out).to_pylist()
    assert row["status"] == "ok" and row["model"] == "mofa-video", row["error"]
    info = probe(row["out_uri"])
    assert row["frames"] == 7 and info.num_frames == 7 and (info.width, info.height) == (96, 96)

"""Follow-Your-Emoji end to end on real talking clips: `facefab train follow-your-emoji` (the single-frame
stage, 2 workers, DeepSpeed ZeRO-2 on CPU, tiny preset) over the shared preprocess root, then the merged
export CKPT/follow-your-emoji/ loads as a FollowYourEmojiPipeline, and `facefab animate --driving` runs it
on a shared portrait and driving clip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefab.jobs.cli import main
from facefab.models.follow_your_emoji import FollowYourEmojiPipeline, tiny
from facefab.training.follow_your_emoji import FollowYourEmojiSystem
from facefab.training.runtime import read_summary

STEPS = 40


@pytest.fixture(scope="module")
def trained(talking_root, tmp_path_factory) -> dict:
    ckpt = tmp_path_factory.mktemp("follow_your_emoji_ckpt") / "ckpt"
    assert main(["train", "follow-your-emoji", "--stage", "single", "--data", talking_root, "--out", str(ckpt),
                 "--preset", "tiny", "--workers", "2", "--cpus-per-worker", "0.5", "--zero-stage", "2",
                 "--val-clips", "0", "--max-steps", str(STEPS), "--batch-size", "4", "--lr", "2e-3",
                 "--checkpoint-every", str(STEPS), "--log-every", "10", "--no-progress",
                 "--system-options", '{"samples_per_clip": 16, "uncond_ratio": 0.0}']) == 0
    (run,) = [p for p in ckpt.iterdir() if (p / "summary.json").exists()]
    return {"ckpt": ckpt, "group": ckpt / "follow-your-emoji", "summary": read_summary(str(run))}


@pytest.mark.slow
def test_single_frame_stage_learns_on_two_zero2_workers(trained):
    s = trained["summary"]
    assert s["status"] == "finished" and s["step"] == STEPS and s["world_size"] == 2 and s["stage"] == "single"
    assert s["strategy"] == "deepspeed" and s["deepspeed_config"]["zero_optimization"]["stage"] == 2
    assert s["replicas_in_sync"] and s["train_clips"] == 2 and s["model_config"]["size"] == 64
    losses = [h["loss"] for h in s["history"]]
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    assert last < 0.8 * first, (first, last, losses)
    assert s["group_export_uri"] == str(trained["group"])


@pytest.mark.slow
def test_the_group_export_loads_and_starts_the_temporal_stage(trained):
    group = trained["group"]
    index = json.loads((group / "model_index.json").read_text())
    assert index["_class_name"] == "FollowYourEmojiPipeline"
    assert set(index) == {"_class_name", "reference_net", "denoising_unet", "lmk_guider"}
    pipe = FollowYourEmojiPipeline.from_pretrained(str(group), device="cpu", dtype="fp32")
    assert pipe.size == 64 and pipe.net.lmk_guider.conv_out.weight.abs().sum() > 0  # the guider trained
    system = FollowYourEmojiSystem()
    system.configure(tiny(), stage="temporal", options={"init": str(group)})
    model = system.build_model(tiny())
    exported = pipe.net.state_dict()
    assert all(torch.equal(v, exported[k]) for k, v in model.state_dict().items())
    trained_now = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained_now and all(".motion_modules." in n for n in trained_now)


@pytest.mark.slow
def test_facefab_animate_drives_a_portrait_with_the_trained_checkpoint(trained, animate_driving):
    """`facefab animate --driving VIDEO --checkpoint CKPT/follow-your-emoji` (the system named by its
    model_index.json): one output frame per driving frame, tagged with the model."""
    animate_driving(str(trained["group"]), "follow-your-emoji", 1.0)

"""MegActor end to end on real talking clips: `facefab train megactor` (the spatial stage, 2 workers, DeepSpeed
ZeRO-2 on CPU, tiny preset) over the shared preprocess root, then the merged export CKPT/megactor/ loads as a
MegActorPipeline (and starts the temporal stage), and `facefab animate --driving` runs it on a shared portrait
and driving clip, the system named by the checkpoint's model_index.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefab.jobs.cli import main
from facefab.models.megactor import MegActorPipeline, tiny
from facefab.training.megactor import MegActorSystem
from facefab.training.runtime import read_summary

STEPS = 40
# the spatial stage (the official stage 1), tiny preset, 2 CPU workers on DeepSpeed ZeRO-2; every batch reads
# the reference (the unconditional branch is a later concern)
TRAIN = ["--stage", "spatial", "--preset", "tiny", "--workers", "2", "--cpus-per-worker", "0.5", "--zero-stage", "2",
         "--val-clips", "0", "--max-steps", str(STEPS), "--batch-size", "4", "--lr", "2e-3", "--checkpoint-every",
         str(STEPS), "--log-every", "10", "--no-progress", "--system-options",
         json.dumps({"samples_per_clip": 16, "uncond_ratio": 0.0})]


@pytest.fixture(scope="module")
def trained(talking_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("megactor_ckpt") / "ckpt"
    assert main(["train", "megactor", "--data", talking_root, "--out", str(out), *TRAIN]) == 0
    runs = [p for p in out.iterdir() if (p / "summary.json").exists()]
    assert len(runs) == 1
    return {"group": out / "megactor", "summary": read_summary(str(runs[0]))}


@pytest.mark.slow
def test_spatial_stage_learns_on_two_zero2_workers(trained):
    s = trained["summary"]
    expected = {"status": "finished", "step": STEPS, "world_size": 2, "stage": "spatial", "strategy": "deepspeed",
                "replicas_in_sync": True, "train_clips": 2, "group_export_uri": str(trained["group"])}
    assert {key: s[key] for key in expected} == expected
    assert s["deepspeed_config"]["zero_optimization"]["stage"] == 2 and s["model_config"]["size"] == 64
    losses = np.array([h["loss"] for h in s["history"]])
    assert losses[-10:].mean() < 0.8 * losses[:10].mean(), losses


@pytest.mark.slow
def test_the_group_export_loads_and_starts_the_temporal_stage(trained):
    index = json.loads((trained["group"] / "model_index.json").read_text())
    assert index.pop("_class_name") == "MegActorPipeline"  # what `facefab animate --checkpoint` picks the system by
    assert sorted(index) == ["appearance_encoder", "background_encoder", "condition_input_layer", "unet"]
    pipe = MegActorPipeline.from_pretrained(str(trained["group"]), device="cpu", dtype="fp32")
    assert pipe.size == 64
    assert pipe.net.condition_input_layer.refer_linears_out[0].weight.any()  # the AdaLN fusion (zero at init) trained
    temporal = MegActorSystem()
    temporal.configure(tiny(), stage="temporal", options={"init": str(trained["group"])})
    continued = temporal.build_model(tiny())
    started = continued.state_dict()
    differ = [k for k, v in pipe.net.state_dict().items() if not torch.equal(v, started[k])]
    assert differ == []
    motion = temporal.trainable_names(continued, ["motion"])
    assert motion and {n for n, p in continued.named_parameters() if p.requires_grad} == motion


@pytest.mark.slow
def test_facefab_animate_drives_a_portrait_with_the_trained_checkpoint(trained, animate_driving):
    """`facefab animate --driving VIDEO --checkpoint CKPT/megactor`: one output frame per driving frame (30 frames:
    16-frame windows overlapping by 8), tagged with the model."""
    row = animate_driving(str(trained["group"]), "megactor", 1.0)
    assert row["frames"] > 16

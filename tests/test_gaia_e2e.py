"""GAIA end to end on real talking clips: `facefab train gaia` (gaia-vae, then gaia-motion, each on 2
workers with DeepSpeed ZeRO-2 on CPU, tiny preset) over the shared preprocess root fills CKPT/gaia/; the
motion stage finds the VAE there by itself; the folder loads as a GaiaPipeline that animates a reference
crop to speech, and `facefab animate` runs it on a portrait."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facefab.jobs.cli import main
from facefab.manifests import read_manifest
from facefab.media import read_audio, read_frames
from facefab.models.gaia import GaiaPipeline, tiny
from facefab.training.gaia import clip_mesh
from facefab.training.runtime import read_summary

STEPS = 40
FRAMES = 40  # three overlapping 16-frame windows


@pytest.fixture(scope="module")
def trained(talking_root, tmp_path_factory) -> dict:
    ckpt = tmp_path_factory.mktemp("gaia_ckpt") / "ckpt"
    # enough samples per clip for the whole run in one pass over the data (a pass decodes the crop videos)
    options = {"gaia-vae": {"pairs_per_clip": 160}, "gaia-motion": {"samples_per_clip": 80}}
    assert main(["train", "gaia", "--data", talking_root, "--out", str(ckpt), "--preset", "tiny",
                 "--workers", "2", "--cpus-per-worker", "0.5", "--zero-stage", "2", "--val-clips", "0",
                 "--max-steps", str(STEPS), "--batch-size", "4", "--lr", "2e-3", "--checkpoint-every", str(STEPS),
                 "--log-every", "10", "--no-progress", "--system-options", json.dumps(options)]) == 0
    runs = {p.name.split("-root-")[0]: read_summary(str(p)) for p in ckpt.iterdir() if (p / "summary.json").exists()}
    return {"ckpt": ckpt, "group": ckpt / "gaia", "summaries": runs}


@pytest.fixture(scope="module")
def reference(talking_clips) -> dict:
    """The first frame of a clip's aligned crop at the tiny size, its mesh there, the clip's speech."""
    row = talking_clips["drive_d6"]
    size = tiny()["vae"]["image_size"]
    mesh, _, _, pose = clip_mesh(row, None, size)
    return {"image": read_frames(row["crop_uri"], end=0.2, size=(size, size))[0], "mesh": mesh[0],
            "audio": read_audio(row["crop_uri"], sample_rate=16000), "fps": float(row["fps"]),
            "pose": pose - pose[0]}


def _first_last(summary: dict, key: str = "loss") -> tuple[float, float]:
    losses = [h[key] for h in summary["history"]]
    return float(np.mean(losses[:10])), float(np.mean(losses[-10:]))


@pytest.mark.slow
def test_both_stages_learn_on_two_zero2_workers(trained):
    runs = trained["summaries"]
    assert sorted(runs) == ["gaia-motion", "gaia-vae"]
    for name, s in runs.items():
        assert s["status"] == "finished" and s["step"] == STEPS and s["world_size"] == 2, name
        assert s["deepspeed_config"]["zero_optimization"]["stage"] == 2 and s["replicas_in_sync"], name
        assert s["group_export_uri"] == str(trained["group"]) and s["train_clips"] == 2, name
    assert runs["gaia-vae"]["model_config"]["image_size"] == 64 and runs["gaia-motion"]["model_config"]["window"] == 16
    first, last = _first_last(runs["gaia-vae"])
    assert last < 0.6 * first, (first, last)
    first, last = _first_last(runs["gaia-motion"])
    assert last < 0.8 * first, (first, last)


@pytest.mark.slow
def test_the_group_export_animates_a_reference(trained, reference):
    group = trained["group"]
    index = json.loads((group / "model_index.json").read_text())
    assert index["_class_name"] == "GaiaPipeline" and set(index) == {"_class_name", "vae", "motion", "scheduler"}
    pipe = GaiaPipeline.from_pretrained(str(group), device="cpu", dtype="fp32", steps=4)
    args = (reference["image"], reference["mesh"], reference["audio"], reference["fps"], FRAMES)
    steps = []
    frames = pipe(*args, seed=0, progress=lambda i, n: steps.append((i, n)))
    assert frames.shape == (FRAMES, 64, 64, 3) and frames.dtype == np.uint8 and steps[-1] == (4, 4)
    assert frames[0].astype(float).std() > 10 and frames.astype(float).std(axis=0).mean() > 0.2  # not constant
    # the appearance is the reference's: every frame is near it (a few dozen steps: a blurry redraw)
    error = np.abs(frames.astype(float) - reference["image"].astype(float)).mean(axis=(1, 2, 3))
    assert error.max() < 40, error
    posed = pipe(*args[:4], 24, pose=reference["pose"][:24], seed=0)
    assert posed.shape == (24, 64, 64, 3) and not np.array_equal(posed, frames[:24])


@pytest.mark.slow
def test_facefab_animate_runs_the_trained_checkpoint(trained, shared_data, tmp_path):
    """`facefab animate --checkpoint CKPT/gaia` (the system named by its model_index.json) on a shared portrait."""
    from facefab.media import probe, write_audio

    speech = str(tmp_path / "speech.wav")
    write_audio(speech, read_audio(str(shared_data / "audio" / "speech_hallo2.wav"), sample_rate=16000, end=1.0),
                16000)
    out = str(tmp_path / "out")
    assert main(["animate", "--reference", str(shared_data / "portraits" / "hallo_2.jpg"), "--audio", speech,
                 "--checkpoint", str(trained["group"]), "--out", out, "--size", "128", "--steps", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    (row,) = read_manifest(out).to_pylist()
    assert row["status"] == "ok" and row["model"] == "gaia", row["error"]
    info = probe(row["out_uri"])
    assert (info.width, info.height) == (128, 128) and info.has_audio and abs(info.duration - 1.0) <= 0.05
    assert Path(trained["group"], "vae", "config.json").is_file()

"""BeautyREC end to end on real talking clips: `facefab train beautyrec` (2 workers, DeepSpeed ZeRO-2 on CPU,
tiny preset) over the shared preprocess root (two face tracks with aligned crops and parsing masks), then the
export loads as a BeautyRECPipeline that moves a source face's lips toward a made-up reference's colour."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefab.face.colour import to_lab
from facefab.jobs.cli import main
from facefab.manifests import read_manifest
from facefab.media import read_frames
from facefab.media.arrays import load_npz
from facefab.models.beautyrec import TINY_CONFIG, BeautyRECNet, BeautyRECPipeline
from facefab.training.beautyrec import lip_colour_distance, synthetic_makeup
from facefab.training.runtime import read_summary

# at 40 steps the lip check below failed in 2 of 4 runs (trained 15.1 against untrained 13.5; 12.7 against
# source 11.4); at 80 steps, with the rows below, the trained distance was 1.9-7.9 against 13.5 in 3 runs
STEPS = 80


@pytest.fixture(scope="module")
def trained(talking_root, tmp_path_factory) -> dict:
    ckpt = tmp_path_factory.mktemp("beautyrec_ckpt") / "ckpt"
    assert main(["train", "beautyrec", "--data", talking_root, "--out", str(ckpt), "--preset", "tiny",
                 "--workers", "2", "--cpus-per-worker", "0.5", "--zero-stage", "2", "--val-clips", "0",
                 "--max-steps", str(STEPS), "--batch-size", "4", "--lr", "2e-3", "--checkpoint-every", str(STEPS),
                 "--log-every", "10", "--no-progress", "--system-options", '{"samples_per_clip": 64, "max_frames": 50}']) == 0
    (run,) = [p for p in ckpt.iterdir() if (p / "summary.json").exists()]
    return {"summary": read_summary(str(run)), "export": run / "export"}


def crops_and_labels(row: dict, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` parsed frames of a row's aligned crop video, at the parsing masks' size."""
    labels = load_npz(row["masks_uri"])["labels"][:count]
    size = labels.shape[-1]
    frames = read_frames(row["crop_uri"], end=count / float(row["fps"]), size=(size, size))[:count]
    return frames, labels[:len(frames)]


@pytest.mark.slow
def test_training_on_two_zero2_workers_lowers_the_loss(trained):
    s = trained["summary"]
    assert s["status"] == "finished" and s["step"] == STEPS and s["world_size"] == 2
    assert s["strategy"] == "deepspeed" and s["deepspeed_config"]["zero_optimization"]["stage"] == 2
    assert s["replicas_in_sync"] and s["train_clips"] == 2 and s["model_config"]["image_size"] == 64
    losses = [h["loss"] for h in s["history"]]
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    assert last < 0.8 * first, (first, last, losses)
    assert {"lips", "skin", "eyes", "perceptual", "content"} <= set(s["history"][-1])


@pytest.mark.slow
def test_the_export_moves_lips_toward_the_reference(trained, talking_clips):
    assert json.loads((trained["export"] / "model_index.json").read_text())["_class_name"] == "BeautyRECPipeline"
    pipe = BeautyRECPipeline.from_pretrained(str(trained["export"]), device="cpu", dtype="fp32")
    sources, source_labels = crops_and_labels(talking_clips["drive_d10"], 6)
    refs, ref_labels = crops_and_labels(talking_clips["drive_d6"], 1)
    reference = synthetic_makeup(refs[0], ref_labels[0], np.random.default_rng(3))  # a clearly made-up face

    made_up = pipe(sources, reference, source_labels, ref_labels[0], batch_size=4)
    assert made_up.shape == sources.shape and made_up.dtype == np.uint8
    torch.manual_seed(0)
    untrained = BeautyRECPipeline(BeautyRECNet(**TINY_CONFIG))(sources, reference, source_labels, ref_labels[0])

    def lip_distance(frames: np.ndarray) -> float:
        return float(np.mean([lip_colour_distance(to_lab(f), l, to_lab(reference), ref_labels[0])
                              for f, l in zip(frames, source_labels)]))

    trained_d, source_d, untrained_d = lip_distance(made_up), lip_distance(sources), lip_distance(untrained)
    assert trained_d < source_d and trained_d < untrained_d, (trained_d, source_d, untrained_d)


@pytest.mark.slow
def test_facefab_makeup_runs_the_export(trained, talking_clips, shared_data, tmp_path):
    """`facefab makeup --model beautyrec --checkpoint EXPORT`: every frame of the video, its size and rate,
    tagged with the model; the face is changed and the picture away from it is not."""

    from facefab.face.mesh import largest_face_landmarks
    from facefab.face.scores import image_psnr
    from face_regions import face_and_away
    from facefab.media import probe, read_metadata
    from facefab.media.provenance import read_tag

    video = talking_clips["drive_d10"]["video_uri"]
    out = tmp_path / "out"
    assert main(["makeup", "--video", video, "--reference", str(shared_data / "portraits" / "lp_s1.jpg"),
                 "--model", "beautyrec", "--checkpoint", str(trained["export"]), "--max-duration", "1",
                 "--watermark", "false", "--crf", "12", "--no-progress"] + ["--out", str(out)]) == 0
    (row,) = read_manifest(str(out)).to_pylist()
    assert row["status"] == "ok" and row["model"] == "beautyrec", row["error"]
    assert row["checkpoint"] == str(trained["export"])
    assert read_tag(read_metadata(row["out_uri"]))["facefab:model"] == "beautyrec"
    source, output = read_frames(video, end=1.0), read_frames(row["out_uri"])
    assert output.shape == source.shape and probe(row["out_uri"]).fps == probe(video).fps
    marks = largest_face_landmarks(source[::5])
    for t, points in zip(range(0, len(source), 5), marks, strict=True):
        face, outside = face_and_away(points, source.shape[1:])
        assert image_psnr(output[t][outside], source[t][outside]) >= 40
        changed = np.abs(output[t].astype(float) - source[t]).mean(axis=-1)[face].mean()
        assert changed > 1.0, (t, changed)

"""Face-Adapter end to end on real talking clips: `facefab train face-adapter` (2 workers, DeepSpeed ZeRO-2 on
CPU, tiny preset: every part from scratch, the UNet too) over the shared preprocess root; the export
CKPT/face-adapter/ loads as a FaceAdapterPipeline and swaps / reenacts. Learning is measured without the
noise of the logged losses: the denoising loss of the trained net and of the untrained one on one fixed
batch with the same noise, timesteps and mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefab.jobs.cli import main
from facefab.manifests import read_manifest
from facefab.models.face_adapter import FaceAdapterPipeline, tiny
from facefab.training.face_adapter import FaceAdapterSystem
from facefab.training.follow_your_emoji import load_aligned_clip
from facefab.training.runtime import read_summary

STEPS = 40
TRAIN = ["--preset", "tiny", "--workers", "2", "--cpus-per-worker", "0.5", "--zero-stage", "2", "--val-clips", "0",
         "--max-steps", str(STEPS), "--batch-size", "4", "--lr", "2e-3", "--checkpoint-every", str(STEPS),
         "--log-every", "10", "--no-progress", "--system-options",
         json.dumps({"samples_per_clip": 16, "uncond_ratio": 0.0, "max_frames": 60})]


@pytest.fixture(scope="module")
def trained(talking_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("face_adapter_ckpt") / "ckpt"
    assert main(["train", "face-adapter", "--data", talking_root, "--out", str(out), *TRAIN]) == 0
    (run,) = [p for p in out.iterdir() if (p / "summary.json").exists()]
    return {"group": out / "face-adapter", "summary": read_summary(str(run))}


@pytest.fixture(scope="module")
def clip(talking_clips) -> dict:
    row = talking_clips["drive_d6"]
    return load_aligned_clip(row, 64, 60, 2, None, "face-adapter")


def _fixed_batch_mse(system: FaceAdapterSystem, net, batch: dict, seed: int) -> float:
    torch.manual_seed(seed)  # the same mode, noise and timesteps for every net
    with torch.no_grad():
        return float(system.terms(net, batch)["mse"])


@pytest.mark.slow
def test_training_runs_on_two_zero2_workers_and_learns(trained, clip):
    s = trained["summary"]
    expected = {"status": "finished", "step": STEPS, "world_size": 2, "strategy": "deepspeed",
                "replicas_in_sync": True, "train_clips": 2, "group_export_uri": str(trained["group"])}
    assert {key: s[key] for key in expected} == expected
    assert s["deepspeed_config"]["zero_optimization"]["stage"] == 2 and s["model_config"]["size"] == 64
    assert all(np.isfinite(h["loss"]) for h in s["history"])

    system = FaceAdapterSystem()
    system.configure(tiny(), options={"uncond_ratio": 0.0, "reference_margin": 5})
    samples = system.draw(clip, np.random.default_rng(0), 8)
    batch = {k: torch.from_numpy(np.stack([x[k] for x in samples])) for k in samples[0]}
    torch.manual_seed(0)
    untrained = system.build_model(tiny()).eval()
    after = FaceAdapterPipeline.from_pretrained(str(trained["group"]), device="cpu", dtype="fp32").net
    before_mse = np.mean([_fixed_batch_mse(system, untrained, batch, seed) for seed in range(4)])
    after_mse = np.mean([_fixed_batch_mse(system, after, batch, seed) for seed in range(4)])
    assert after_mse < 0.5 * before_mse, (before_mse, after_mse)


@pytest.mark.slow
def test_the_export_loads_and_swaps_and_reenacts(trained, clip):
    index = json.loads((trained["group"] / "model_index.json").read_text())
    assert index.pop("_class_name") == "FaceAdapterPipeline"
    assert sorted(index) == ["area_predictor", "attribute_encoder", "controlnet", "face_id", "id2token",
                             "image2token", "unet"]
    pipe = FaceAdapterPipeline.from_pretrained(str(trained["group"]), device="cpu", dtype="fp32")
    assert pipe.size == 64 and pipe.net.controlnet.controlnet_mid_block.weight.abs().sum() > 0
    crops, mesh = clip["crops"], clip["mesh"]
    known = np.flatnonzero(clip["valid"])
    source, targets = known[0], known[-3:]
    for mode in ("swap", "reenact"):
        out = pipe(crops[source], crops[targets], mesh[targets], mode=mode, source_landmarks=mesh[source], steps=4)
        assert out.shape == (3, 64, 64, 3) and out.dtype == np.uint8
        base = crops[targets] if mode == "swap" else np.broadcast_to(crops[source], out.shape)
        assert 0 < np.abs(out.astype(int) - base).mean() < 60  # a face redrawn, not noise


@pytest.mark.slow
def test_facefab_swap_runs_the_export_in_both_modes(trained, talking_clips, shared_data, tmp_path):
    """`facefab swap --model face-adapter --checkpoint EXPORT`: swap mode writes every frame of the video at
    its size and rate, the face changed and the picture away from it not; `--mode reenact` moves the source
    portrait (its size) through the video's frames, with the same export."""

    from facefab.face.mesh import largest_face_landmarks
    from facefab.face.scores import image_psnr
    from face_regions import face_and_away
    from facefab.media import probe, read_frames, read_image, read_metadata
    from facefab.media.provenance import read_tag

    video = talking_clips["drive_d10"]["video_uri"]
    source = str(shared_data / "portraits" / "lp_s1.jpg")
    common = ["--video", video, "--source", source, "--model", "face-adapter", "--checkpoint", str(trained["group"]),
              "--max-duration", "0.6", "--no-progress"]
    assert main(["swap", *common, "--watermark", "false", "--crf", "12", "--out", str(tmp_path / "swap")]) == 0
    (row,) = read_manifest(str(tmp_path / "swap")).to_pylist()
    assert row["status"] == "ok" and row["model"] == "face-adapter", row["error"]
    assert read_tag(read_metadata(row["out_uri"]))["facefab:model"] == "face-adapter"
    frames, output = read_frames(video, end=0.6), read_frames(row["out_uri"])
    assert output.shape == frames.shape and probe(row["out_uri"]).fps == probe(video).fps
    marks = largest_face_landmarks(frames[::4])
    for t, points in zip(range(0, len(frames), 4), marks, strict=True):
        face, outside = face_and_away(points, frames.shape[1:])
        assert image_psnr(output[t][outside], frames[t][outside]) >= 40
        assert np.abs(output[t].astype(float) - frames[t]).mean(axis=-1)[face].mean() > 1.0

    assert main(["swap", *common, "--mode", "reenact", "--out", str(tmp_path / "reenact")]) == 0
    (row,) = read_manifest(str(tmp_path / "reenact")).to_pylist()
    assert row["status"] == "ok" and row["model"] == "face-adapter", row["error"]
    info, portrait = probe(row["out_uri"]), read_image(source)
    assert abs(info.height - portrait.shape[0]) <= 1 and abs(info.width - portrait.shape[1]) <= 1
    assert info.num_frames == len(frames)

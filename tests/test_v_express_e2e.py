"""V-Express end to end on real talking clips: `facefab train v-express --stage single` (2 workers,
DeepSpeed ZeRO-2 on CPU, tiny preset) over the shared preprocess root, then the merged export
CKPT/v-express/ loads as a VExpressPipeline that animates a reference crop to speech, and starts the
next stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facefab.jobs.cli import main
from facefab.manifests import read_manifest
from facefab.media import read_audio, read_frames
from facefab.models.shared.latents import PixelCodec
from facefab.models.v_express import VExpressNet, VExpressPipeline, tiny
from facefab.operators.track_row import read_frame_table
from facefab.training.runtime import read_summary
from facefab.training.v_express import VExpressSystem

# at 40 steps the coarse-error check on one clip gave 0.65-0.82x of the untrained model's over four runs
# (one failed its 0.8x); figures at 80 in test_the_trained_weights_pull_frames_toward_each_reference
STEPS = 80
FRAMES = 28  # two overlapping 24-frame windows


@pytest.fixture(scope="module")
def trained(talking_root, tmp_path_factory) -> dict:
    ckpt = tmp_path_factory.mktemp("v_express_ckpt") / "ckpt"
    assert main(["train", "v-express", "--stage", "single", "--data", talking_root, "--out", str(ckpt),
                 "--preset", "tiny", "--workers", "2", "--cpus-per-worker", "0.5", "--zero-stage", "2",
                 "--val-clips", "0", "--max-steps", str(STEPS), "--batch-size", "4", "--lr", "2e-3",
                 "--checkpoint-every", str(STEPS), "--log-every", "10", "--no-progress",
                 "--system-options", '{"samples_per_clip": 16}']) == 0
    (run,) = [p for p in ckpt.iterdir() if (p / "summary.json").exists()]
    return {"ckpt": ckpt, "group": ckpt / "v-express", "summary": read_summary(str(run))}


def reference_of(row: dict) -> dict:
    """The first frame of a clip's aligned crop at the tiny size, its mesh there, the clip's speech."""
    size = tiny()["size"]
    track = read_frame_table(row["frames_uri"])
    mesh = track.landmarks_in_crop()[..., :2] * (size / row["crop_size"])
    return {"image": read_frames(row["crop_uri"], end=0.2, size=(size, size))[0], "mesh": mesh[0],
            "audio": read_audio(row["crop_uri"], sample_rate=16000), "fps": float(row["fps"]),
            "pose": track.pose[:, :3] - track.pose[0, :3]}  # offsets from the first frame, as pose_source reads


@pytest.fixture(scope="module")
def references(talking_clips) -> dict:
    return {name: reference_of(row) for name, row in talking_clips.items()}


@pytest.mark.slow
def test_single_frame_stage_learns_on_two_zero2_workers(trained):
    s = trained["summary"]
    assert s["status"] == "finished" and s["step"] == STEPS and s["world_size"] == 2 and s["stage"] == "single"
    assert s["strategy"] == "deepspeed" and s["deepspeed_config"]["zero_optimization"]["stage"] == 2
    assert s["replicas_in_sync"] and s["train_clips"] == 2 and s["model_config"]["size"] == 64
    losses = [h["loss"] for h in s["history"]]
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    # each step draws its own timesteps and noise, so ten-step means still wander (one CI run: 0.79x)
    assert last < 0.85 * first, (first, last, losses)
    assert s["group_export_uri"] == str(trained["group"])


@pytest.mark.slow
def test_the_group_export_animates_a_reference(trained, references):
    group = trained["group"]
    index = json.loads((group / "model_index.json").read_text())
    assert set(index) == {"_class_name", "reference_net", "denoising_unet", "v_kps_guider", "audio_projection"}
    pipe = VExpressPipeline.from_pretrained(str(group), device="cpu", dtype="fp32")
    reference = references["drive_d6"]
    args = (reference["image"], reference["mesh"], reference["audio"], reference["fps"], FRAMES)
    steps = []
    frames = pipe(*args, seed=0, progress=lambda i, n: steps.append((i, n)))
    assert frames.shape == (FRAMES, 64, 64, 3) and frames.dtype == np.uint8
    assert steps[-1] == (tiny()["sampling"]["steps"],) * 2
    assert frames.astype(float).std(axis=0).mean() > 2 and frames[0].astype(float).std() > 10  # not constant

    # a pose track moves the V-kps: other frames, the same shape
    posed = pipe(*args[:4], 24, pose=reference["pose"][:24], seed=0)
    assert posed.shape == (24, 64, 64, 3) and not np.array_equal(posed, frames[:24])


@pytest.mark.slow
def test_the_trained_weights_pull_frames_toward_each_reference(trained, references):
    """The frames' coarse content (blurred, averaged over 8 frames) is nearer each clip's reference than
    an untrained pipeline's, summed over both clips. Each training draws its own samples, and one clip
    alone is noisy: over six trainings the ratio was 0.38-0.68x on drive_d10 (one CI run: 0.86x) and
    0.42-0.52x on drive_d6; the sum 0.41-0.56x."""
    import cv2

    pipe = VExpressPipeline.from_pretrained(str(trained["group"]), device="cpu", dtype="fp32")
    torch.manual_seed(0)
    untrained = VExpressPipeline(VExpressNet.fresh(tiny()), PixelCodec(4), tiny())
    errors = {"trained": {}, "untrained": {}}
    for name, ref in references.items():
        target = cv2.blur(ref["image"].astype(np.float32), (9, 9))
        for kind, p in (("trained", pipe), ("untrained", untrained)):
            video = p(ref["image"], ref["mesh"], ref["audio"], ref["fps"], 8, seed=0)
            errors[kind][name] = float(np.abs(cv2.blur(video.astype(np.float32).mean(0), (9, 9)) - target).mean())
    assert sum(errors["trained"].values()) < 0.8 * sum(errors["untrained"].values()), errors


@pytest.mark.slow
def test_the_next_stage_starts_from_the_group_export(trained):
    system = VExpressSystem()
    system.configure(tiny(), stage="temporal", options={"init": str(trained["group"])})
    model = system.build_model(tiny())
    exported = VExpressPipeline.from_pretrained(str(trained["group"]), device="cpu", dtype="fp32").net.state_dict()
    assert all(torch.equal(v, exported[k]) for k, v in model.state_dict().items())
    trained_now = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained_now == {"denoising_unet"} and Path(trained["group"], "pipeline.json").is_file()


@pytest.mark.slow
def test_facefab_animate_runs_the_trained_checkpoint(trained, shared_data, tmp_path):
    """`facefab animate --checkpoint CKPT/v-express` (the system named by its model_index.json) on a
    shared portrait: the aligned crop is animated at the model's size, resized, speech muxed, tagged."""
    from facefab.media import probe, read_metadata, write_audio
    from facefab.media.provenance import read_tag

    speech = str(tmp_path / "speech.wav")
    write_audio(speech, read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), sample_rate=16000, end=1.2),
                16000)
    out = str(tmp_path / "out")
    assert main(["animate", "--reference", str(shared_data / "portraits" / "hallo_3.jpg"), "--audio", speech,
                 "--checkpoint", str(trained["group"]), "--out", out, "--size", "128", "--steps", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    (row,) = read_manifest(out).to_pylist()
    assert row["status"] == "ok" and row["model"] == "v-express", row["error"]
    info = probe(row["out_uri"])
    assert (info.width, info.height) == (128, 128) and info.has_audio and abs(info.duration - 1.2) <= 0.05
    assert read_tag(read_metadata(row["out_uri"]))["facefab:model"] == "v-express"

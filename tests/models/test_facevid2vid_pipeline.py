"""face-vid2vid inference (models/facevid2vid/pipeline.py) on the tiny model, driven by real clips.

An untrained pose/expression estimator barely reacts to its input, so the model here has its three
estimator heads' weights scaled up (`_lively`): different frames then give clearly different motions,
and the relative / absolute assertions below are about something visible.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefab.models.facevid2vid import FaceVid2VidModel, FaceVid2VidPipeline
from facefab.models.facevid2vid.model import head_motion, relative_motion
from facefab.models.weights import CheckpointError

N = 6  # driving frames


def _lively(model: FaceVid2VidModel, factor: float = 10.0) -> FaceVid2VidModel:
    with torch.no_grad():
        for head in (model.pose.angles, model.pose.translation, model.pose.expression):
            head.weight.mul_(factor)
    return model.eval()


@pytest.fixture(scope="module")
def pipe() -> FaceVid2VidPipeline:
    torch.manual_seed(0)
    return FaceVid2VidPipeline(_lively(FaceVid2VidModel.tiny()))


@pytest.fixture(scope="module")
def clips(shared_data):
    """(reference, driving): the first frame of drive_d3 (one person) and N frames of drive_d0 (another,
    turning his head), 64 px."""
    from facefab.media import read_frames

    reference = read_frames(str(shared_data / "videos" / "drive_d3.mp4"), end=0.1, size=(64, 64))[0]
    driving = read_frames(str(shared_data / "videos" / "drive_d0.mp4"), end=3.0, size=(64, 64))[::12][:N]
    assert len(driving) == N
    return reference, driving


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def test_relative_motion_algebra():
    torch.manual_seed(1)
    model = _lively(FaceVid2VidModel.tiny())
    with torch.no_grad():
        poses = [model.estimate_pose(torch.rand(1, 3, 64, 64)) for _ in range(3)]
    s, d, d0 = poses
    for key, value in relative_motion(s, d0, d0).items():  # driving == its first frame: the source's own motion
        torch.testing.assert_close(value, head_motion(s)[key], atol=1e-5, rtol=1e-5)
    for key, value in relative_motion(d0, d, d0).items():  # source == first driving frame: the driving's motion
        torch.testing.assert_close(value, head_motion(d)[key], atol=1e-5, rtol=1e-5)


def test_output_and_protocol(pipe, clips):
    reference, driving = clips
    calls = []
    out = pipe(reference, np.zeros((478, 2), np.float32), driving, np.full((N, 478, 2), np.nan, np.float32),
               steps=3, guidance_scale=7.0, seed=5, progress=lambda done, total: calls.append((done, total)))
    assert pipe.size == 64 and pipe.batch_size == 16
    assert out.shape == (N, 64, 64, 3) and out.dtype == np.uint8
    assert calls == [(N, N)]
    assert out.std() > 5  # an image, not a constant
    # points, steps, guidance and seed are not used; batching does not change the frames
    pipe.batch_size = 4
    try:
        again = pipe(reference, None, driving, None, progress=lambda done, total: calls.append((done, total)))
    finally:
        pipe.batch_size = 16
    assert calls[1:] == [(4, N), (N, N)]
    assert _diff(out, again).max() <= 1
    with pytest.raises(ValueError, match="driving"):
        pipe(reference, None, driving[0], None)


def test_relative_with_the_reference_as_driving_is_still(pipe, clips):
    reference = clips[0]
    still = pipe(reference, None, np.stack([reference] * N), None)
    assert _diff(still, still[:1]).max() <= 1  # zero motion: the same frame N times
    absolute = pipe(reference, None, reference[None], None, relative=False)
    assert _diff(still[0], absolute[0]).max() <= 1
    with torch.inference_mode():
        x = torch.from_numpy(reference[None]).permute(0, 3, 1, 2).float() / 255
        direct = pipe.model(x, x)["prediction"]  # the model's own (training) path, source = driving
    direct = (direct.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert _diff(still[0], direct[0]).max() <= 1


def test_relative_and_absolute(pipe, clips):
    reference, driving = clips
    relative = pipe(reference, None, driving, None)
    absolute = pipe(reference, None, driving, None, relative=False)
    # the first driving frame is another face: absolute takes its pose, relative keeps the reference's
    assert _diff(relative, absolute).mean() > 3
    itself = pipe(reference, None, reference[None], None)[0]
    assert _diff(relative[0], itself).max() <= 1
    # and the driving head's motion moves the relative frames
    assert _diff(relative[1:], relative[:1]).mean(axis=(1, 2, 3)).min() > 1
    # a driving clip that starts at the reference: relative and absolute agree on its first frame
    same_start = np.concatenate([reference[None], driving])
    assert _diff(pipe(reference, None, same_start, None)[0],
                 pipe(reference, None, same_start[:1], None, relative=False)[0]).max() <= 1


def test_save_and_load(pipe, clips, tmp_path):
    from facefab.models.registry import get
    from facefab.training.facevid2vid import FaceVid2VidSystem

    reference, driving = clips[0], clips[1][:3]

    def same_weights(a: FaceVid2VidPipeline, b: FaceVid2VidPipeline) -> bool:
        sa, sb = a.model.state_dict(), b.model.state_dict()
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    pipe.save_pretrained(str(tmp_path / "pipe"))
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index == {"_class_name": "FaceVid2VidPipeline"}
    assert get("face-vid2vid").model.split(":")[1] == index["_class_name"]  # how `animate --checkpoint` tells
    loaded = FaceVid2VidPipeline.from_pretrained(str(tmp_path / "pipe"), device="cpu", dtype="fp32")
    assert same_weights(loaded, pipe) and loaded.size == pipe.size
    expected = loaded(reference, None, driving, None)
    # Bit-identical weights, but the loaded ones sit at another memory alignment (one safetensors buffer),
    # and the batch-1 matrix-vector product of the pose heads rounds differently there: a level at most.
    in_memory = pipe(reference, None, driving, None)
    assert _diff(expected, in_memory).max() <= 1 and (expected == in_memory).mean() > 0.99
    loaded.save_pretrained(str(tmp_path / "again"))
    again = FaceVid2VidPipeline.from_pretrained(str(tmp_path / "again"), device="cpu", dtype="fp32")
    assert same_weights(again, pipe) and np.array_equal(again(reference, None, driving, None), expected)

    # a bare model folder (the training export before model_index.json) loads too
    pipe.model.save_pretrained(str(tmp_path / "bare"), safe_serialization=True)
    bare = FaceVid2VidPipeline.from_pretrained(str(tmp_path / "bare"), device="cpu", dtype="fp32")
    assert same_weights(bare, pipe) and np.array_equal(bare(reference, None, driving, None), expected)

    # the training export is a pipeline folder that FaceVid2VidModel.from_pretrained still loads
    FaceVid2VidSystem().export(pipe.model, str(tmp_path / "export"))
    assert json.loads((tmp_path / "export" / "model_index.json").read_text()) == index
    assert FaceVid2VidModel.from_pretrained(str(tmp_path / "export")).config.image_size == 64
    exported = FaceVid2VidPipeline.from_pretrained(str(tmp_path / "export"), device="cpu", dtype="fp32")
    assert same_weights(exported, pipe) and np.array_equal(exported(reference, None, driving, None), expected)

    (tmp_path / "bare" / "model_index.json").write_text(json.dumps({"_class_name": "HalloPipeline"}))
    with pytest.raises(CheckpointError, match="HalloPipeline"):
        FaceVid2VidPipeline.from_pretrained(str(tmp_path / "bare"), device="cpu")

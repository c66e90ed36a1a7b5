"""FaceTrack -> FaceLandmarks -> AlignCrop -> HeadPose on real media (short windows, CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED as DATA

from facefab.face.alignment import paste_back, similarity_from_landmarks, warp_to_crop
from facefab.face.detection import Detection, detect_faces, track_faces
from facefab.face.mesh import MEDIAPIPE_TO_68, FaceMesher, to_68
from facefab.face.pose import head_pose
from facefab.face.scores import image_psnr
from facefab.face.smoothing import moving_average
from facefab.media import probe, read_frames, write_video
from facefab.media.arrays import unpack_arrays
from facefab.operators.align import AlignCrop
from facefab.operators.base import RunContext
from facefab.operators.faces import FaceTrack
from facefab.operators.landmarks import FaceLandmarks
from facefab.operators.pose import HeadPose
from facefab.pipelines.engine import run_local

DRIVE = DATA / "videos" / "drive_d0.mp4"  # 512x512, 25 fps, one man moving his head, no audio
TALK_WITH_AUDIO = DATA / "videos" / "drive_d6.mp4"  # 30 fps, speech


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def clip_row(uri: Path | str, start: float, end: float, *, width: int, height: int, has_audio: bool = False,
             clip_id: str = "clip0") -> dict:
    return {"id": clip_id, "source_id": "src0", "status": "ok", "video_uri": str(uri), "start": start,
            "end": end, "fps": 25.0, "width": width, "height": height, "has_audio": has_audio}


def chain(**track_config) -> list:
    return [FaceTrack(track_config or None), FaceLandmarks(), AlignCrop(), HeadPose()]


@pytest.fixture(scope="module")
def drive_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("drive")
    row = clip_row(DRIVE, 0.5, 2.5, width=512, height=512)
    return run_local(chain(), [row], RunContext(out_root=str(out)))


@pytest.fixture(scope="module")
def drive_track(drive_rows):
    (row,) = drive_rows
    assert row["status"] == "ok", row.get("error")
    arrays = {}
    for column in ("_track", "_landmarks", "_align", "_pose"):
        arrays.update(unpack_arrays(row[column]))
    return row, arrays


# -- FaceTrack ---------------------------------------------------------------------------------

def test_drive_clip_gives_one_track_over_all_frames(drive_rows, drive_track):
    row, a = drive_track
    assert len(drive_rows) == 1
    assert row["track_id"] == 0 and row["face_count"] == 1 and row["clip_id"] == "clip0"
    assert row["id"] != "clip0" and row["source_id"] == "src0"
    assert len(a["frame_index"]) >= 48  # of 50 frames in 2 s
    # the detector runs on every 5th frame (faces.detect_every) and the last; it finds the face on each
    n = len(a["present"])
    assert a["present"][::5].all() and a["present"][-1] and a["present"].sum() == len({*range(0, n, 5), n - 1})
    assert a["bbox"].shape == (len(a["frame_index"]), 4) and a["bbox"].dtype == np.float32
    width, height = a["bbox"][:, 2] - a["bbox"][:, 0], a["bbox"][:, 3] - a["bbox"][:, 1]
    assert (width > 100).all() and (height > 100).all()  # a close-up face in a 512 px frame
    assert row["track_end"] - row["track_start"] == pytest.approx(len(a["frame_index"]) / 25.0)


def test_two_faces_give_two_tracks_with_disjoint_boxes(tmp_path):
    left = rgb(DATA / "portraits" / "hallo_2.jpg")
    right = rgb(DATA / "portraits" / "lp_s9.jpg")
    right = cv2.resize(right, (left.shape[0] * right.shape[1] // right.shape[0], left.shape[0]))
    pair = np.concatenate([left, right], axis=1)[:, :688]
    # 1 s of a slow pan so the frames are not identical
    frames = np.stack([np.roll(pair, shift=i, axis=1) for i in range(25)])
    uri = tmp_path / "two_faces.mp4"
    write_video(str(uri), frames, 25.0)
    row = clip_row(uri, 0.0, 1.0, width=pair.shape[1], height=pair.shape[0])

    rows = run_local([FaceTrack({"min_track_frames": 10}), FaceLandmarks()], [row], RunContext(str(tmp_path)))

    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("error") for r in rows]
    assert sorted(r["track_id"] for r in rows) == [0, 1]
    assert len({r["id"] for r in rows}) == 2 and all(r["face_count"] == 2 for r in rows)
    centres_x = []
    for r in sorted(rows, key=lambda r: r["track_id"]):
        track, marks = unpack_arrays(r["_track"]), unpack_arrays(r["_landmarks"])
        assert len(track["frame_index"]) >= 23
        bbox = track["bbox"]
        centres_x.append((bbox[:, 0] + bbox[:, 2]) / 2)
        mesh_centre_x = np.nanmean(marks["landmarks"][..., 0], axis=1)
        assert ((mesh_centre_x > bbox[:, 0]) & (mesh_centre_x < bbox[:, 2]))[marks["valid"]].all()
    left_x, right_x = centres_x  # track ids run left to right for faces that appear together
    assert left_x.max() < right_x.min()


def test_clip_without_face_is_filtered(tmp_path):
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), (0, 0), 8)
    uri = tmp_path / "no_face.mp4"
    write_video(str(uri), np.repeat(noise[None], 20, axis=0), 25.0)
    (row,) = run_local([FaceTrack()], [clip_row(uri, 0.0, 0.8, width=256, height=256)])
    assert row["status"] == "filtered"
    assert "no face found in 20 frames" in json.loads(row["error"])["message"]


def _det(x: float) -> Detection:
    return Detection(np.array([x, 10, x + 50, 60], np.float32), 0.9)


def test_track_faces_bridges_short_gaps_and_splits_reentries():
    frames: list[list[Detection]] = [[] for _ in range(70)]
    for f in range(20):
        frames[f].append(_det(100 + f))
    for f in range(23, 30):  # 3 missed frames, then the same face again
        frames[f].append(_det(100 + f))
    for f in range(45, 70):  # gone for 15 frames: a new track
        frames[f].append(_det(300))
    frames[60].append(_det(600))  # a one-frame false positive: dropped

    tracks = track_faces(frames, max_gap_frames=5, min_track_frames=10, smooth_window=1)

    assert [t.track_id for t in tracks] == [0, 1]
    first, second = tracks
    assert first.frame_index.tolist() == list(range(30))
    assert not first.present[20:23].any() and first.present[:20].all()
    assert first.bbox[21, 0] == pytest.approx(121, abs=1e-4)  # linearly interpolated
    assert second.frame_index[0] == 45 and len(second) == 25


def test_moving_average_keeps_ramps_and_ends():
    ramp = np.arange(10, dtype=float)[:, None] * [1.0, 2.0]
    np.testing.assert_allclose(moving_average(ramp, 5), ramp)
    noisy = np.array([0.0, 10.0, 0.0, 10.0, 0.0])
    assert moving_average(noisy, 3)[2] == pytest.approx(20 / 3)


# -- FaceLandmarks -------------------------------------------------------------------------------

def test_landmarks_lie_in_the_track_box(drive_track):
    row, a = drive_track
    landmarks, valid, bbox = a["landmarks"], a["valid"], a["bbox"]
    assert landmarks.shape == (len(a["frame_index"]), 478, 3) and landmarks.dtype == np.float32
    assert valid.mean() > 0.95 and row["landmark_fraction"] == pytest.approx(valid.mean(), abs=1e-3)
    pad = 0.05 * (bbox[:, 2:] - bbox[:, :2])
    lo, hi = (bbox[:, :2] - pad)[:, None], (bbox[:, 2:] + pad)[:, None]
    inside = ((landmarks[..., :2] >= lo) & (landmarks[..., :2] <= hi)).all(axis=-1)
    assert inside[valid].mean() > 0.97


def test_68_point_layout_is_anatomical(drive_track):
    _, a = drive_track
    assert MEDIAPIPE_TO_68.shape == (68,) and len(set(MEDIAPIPE_TO_68.tolist())) == 68
    points = to_68(a["landmarks"][a["valid"]])[..., :2]
    assert points.shape[1:] == (68, 2)
    x, y = points[..., 0], points[..., 1]
    image_left_eye_x, image_right_eye_x = x[:, 36:42].mean(1), x[:, 42:48].mean(1)
    assert (image_left_eye_x < image_right_eye_x).all()
    assert ((x[:, 30] > image_left_eye_x) & (x[:, 30] < image_right_eye_x)).all()  # nose tip between eyes
    assert (y[:, 30] > y[:, 36:48].mean(1)).all()  # nose below the eyes
    assert (y[:, 48:68].mean(1) > y[:, 33]).all()  # mouth below the nose
    assert (y[:, 8] > y[:, 48:68].max(1)).all()  # chin below the mouth
    assert (x[:, 48] < x[:, 54]).all() and (y[:, 17:27].mean(1) < y[:, 36:48].mean(1)).all()


# -- AlignCrop -----------------------------------------------------------------------------------

def _eye_centres_in_crop(affine: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    eyes = np.stack([to_68(landmarks)[:, 36:42, :2].mean(1), to_68(landmarks)[:, 42:48, :2].mean(1)], axis=1)
    return np.einsum("tij,tkj->tki", affine[:, :, :2], eyes) + affine[:, None, :, 2]


def test_aligned_crop_keeps_eyes_in_place(drive_track):
    row, a = drive_track
    assert row["crop_size"] == 512 and a["affine"].shape == (len(a["frame_index"]), 2, 3)
    eyes = _eye_centres_in_crop(a["affine"], a["landmarks"])[a["valid"]]
    spread = np.abs(eyes - np.median(eyes, axis=0)).max()
    assert spread < 8.0, f"eye centres move by {spread:.1f} px in the 512 px crop"
    left, right = np.median(eyes, axis=0)
    assert 150 < left[0] < right[0] < 362 and abs(left[1] - right[1]) < 4  # level, FFHQ-like placement
    roundtrip = np.einsum("tij,tjk->tik", a["inverse"][:, :, :2], a["affine"][:, :, :2])
    np.testing.assert_allclose(roundtrip, np.broadcast_to(np.eye(2), roundtrip.shape), atol=1e-4)


def test_aligned_crop_does_not_zoom_when_the_mouth_opens(drive_track):
    _, a = drive_track
    lips = to_68(a["landmarks"])[a["valid"]]
    mouth_opening = lips[:, 66, 1] - lips[:, 62, 1]
    assert mouth_opening.max() - mouth_opening.min() > 15  # drive_d0 opens its mouth in this window
    scale = np.hypot(a["affine"][:, 0, 0], a["affine"][:, 0, 1])
    assert (scale.max() - scale.min()) / scale.mean() < 0.03


def test_crop_video_is_written(drive_track):
    row, a = drive_track
    crops = read_frames(row["crop_uri"])
    assert crops.shape == (len(a["frame_index"]), 512, 512, 3)
    assert probe(row["crop_uri"]).fps == pytest.approx(25.0)


def test_paste_back_restores_the_face_region():
    frame = read_frames(str(DRIVE), start=1.0, end=1.04)[0]
    (dets,) = detect_faces(frame[None])
    landmarks = FaceMesher()(frame, dets[0].bbox)
    affine = similarity_from_landmarks(landmarks, size=512)
    inverse = cv2.invertAffineTransform(affine)

    restored = paste_back(frame, warp_to_crop(frame, affine, 512), inverse)

    x0, y0, x1, y1 = dets[0].bbox.astype(int)
    assert image_psnr(restored[y0:y1, x0:x1], frame[y0:y1, x0:x1]) > 25
    assert restored.shape == frame.shape and restored.dtype == np.uint8


def test_crop_video_carries_16k_audio(tmp_path):
    row = clip_row(TALK_WITH_AUDIO, 2.0, 3.0, width=512, height=512, has_audio=True)
    rows = run_local([FaceTrack({"min_track_frames": 10}), FaceLandmarks(), AlignCrop()], [row],
                     RunContext(str(tmp_path)))
    assert [r["status"] for r in rows] == ["ok"], rows[0].get("error")
    info = probe(rows[0]["crop_uri"])
    assert info.has_audio and info.audio_sample_rate == 16000 and info.audio_channels == 1
    assert info.width == info.height == 512


# -- HeadPose ------------------------------------------------------------------------------------

def test_pose_columns(drive_track):
    row, a = drive_track
    pose = a["pose"]
    assert pose.shape == (len(a["frame_index"]), 6) and np.isfinite(pose).all()
    assert row["pose_max_abs"] == pytest.approx(np.abs(pose[:, :2]).max(), abs=1e-2)
    assert abs(row["yaw_mean"]) < 45 and abs(row["roll_mean"]) < 30
    assert (pose[:, 5] > 0).all()  # the face is in front of the camera


@pytest.mark.parametrize("portrait", ["lp_s9.jpg", "hallo_3.jpg"])
def test_mirrored_face_has_opposite_yaw(portrait):
    image = rgb(DATA / "portraits" / portrait)
    height, width = image.shape[:2]
    mesher = FaceMesher()
    yaws = []
    for view in (image, np.ascontiguousarray(image[:, ::-1])):
        (dets,) = detect_faces(view[None])
        yaws.append(head_pose(mesher(view, dets[0].bbox), width, height)[0])
    original, mirrored = yaws
    assert abs(original) > 5, f"{portrait} is too frontal for a sign test (yaw {original:.1f})"
    assert np.sign(original) == -np.sign(mirrored)
    assert abs(abs(original) - abs(mirrored)) < 3


def test_a_clip_too_large_to_keep_decoded_streams_with_the_same_results(drive_rows, tmp_path, monkeypatch):
    # Below the frame cache's byte budget the clip is decoded once and shared; above it every stage
    # decodes it again in small chunks (a 10 s 4K clip would be 6 GB). The outputs must not change.
    from facefab.media import frame_cache

    frame_cache.clear()
    monkeypatch.setattr(frame_cache, "MAX_BYTES", 10 << 20)  # the 2 s 512x512 clip is 39 MB
    row = clip_row(DRIVE, 0.5, 2.5, width=512, height=512)
    assert isinstance(frame_cache.clip_source(str(DRIVE), fps=25.0, start=0.5, end=2.5, width=512, height=512),
                      frame_cache.StreamedFrames)
    (streamed,) = run_local(chain(), [row], RunContext(out_root=str(tmp_path)))
    (cached,) = drive_rows
    assert streamed["status"] == "ok", streamed.get("error")
    assert not frame_cache._cache  # nothing of the clip was kept
    for column in ("_track", "_landmarks", "_align"):
        a, b = unpack_arrays(streamed[column]), unpack_arrays(cached[column])
        for key in b:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{column}.{key}")
    assert image_psnr(read_frames(streamed["crop_uri"]), read_frames(cached["crop_uri"])) > 60


def test_take_picks_increasing_frames_from_arrays_and_streams():
    from facefab.media import MediaError
    from facefab.media.frame_cache import StreamedFrames, take

    frames = read_frames(str(DRIVE), fps=25.0, start=0.0, end=0.4)
    stream = StreamedFrames(str(DRIVE), fps=25.0, start=0.0, end=0.4)
    for source in (frames, stream):
        picked = list(take(source, [2, 3, 7]))
        assert len(picked) == 3 and all(np.array_equal(p, frames[i]) for p, i in zip(picked, [2, 3, 7]))
        with pytest.raises(MediaError, match="frame 10 asked of a window of 10 frames"):
            list(take(source, [1, 10]))


_PEAK_SCRIPT = """
import json, sys, threading
import psutil
from facefab.operators.base import RunContext
from facefab.operators.faces import FaceTrack
from facefab.operators.landmarks import FaceLandmarks
from facefab.operators.align import AlignCrop
from facefab.pipelines.engine import run_local
ops = [FaceTrack(), FaceLandmarks(), AlignCrop()]
for op in ops:
    op.ensure_setup()
row = json.loads(sys.argv[1])
me = psutil.Process()
before, peak, done = me.memory_info().rss, [0], threading.Event()
def sample():
    while not done.wait(0.02):
        peak[0] = max(peak[0], me.memory_info().rss)
threading.Thread(target=sample, daemon=True).start()
(out,) = run_local(ops, [row], RunContext(out_root=sys.argv[2]))
done.set()
print(json.dumps({"status": out["status"], "error": out.get("error"), "growth": peak[0] - before}))
"""


@pytest.mark.slow
def test_a_large_clip_is_processed_within_a_memory_ceiling(tmp_path):
    # 4 s at 1920x1080 is 0.6 GB of decoded frames: held when the frame cache may keep it, streamed
    # in chunks when its budget is smaller. The same run in a fresh process each way: the streamed
    # run's peak grows by a fixed amount (about 250 MB here: codecs, MediaPipe), the held one by more
    # than the clip.
    import subprocess
    import sys

    big = tmp_path / "big.mp4"
    frames = read_frames(str(DRIVE), fps=25.0, start=0.0, end=4.0)
    canvas = np.zeros((len(frames), 1080, 1920, 3), np.uint8)
    canvas[:, 28:1052, 448:1472] = np.stack([cv2.resize(f, (1024, 1024)) for f in frames])
    write_video(str(big), canvas, 25.0)
    clip_bytes = canvas.nbytes
    del canvas
    row = json.dumps(clip_row(big, 0.0, 4.0, width=1920, height=1080))

    def growth(budget_mb: int) -> int:
        env = {**os.environ, "FACEFAB_FRAME_CACHE_MB": str(budget_mb)}
        done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, row, str(tmp_path / f"out{budget_mb}")],
                              capture_output=True, text=True, env=env, timeout=600)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["status"] == "ok", (result, done.stderr[-2000:])
        return result["growth"]

    streamed, held = growth(64), growth(4096)
    assert streamed < 0.6 * clip_bytes, (streamed, clip_bytes)  # codec and model buffers, not the clip
    assert held > clip_bytes, (held, clip_bytes)


# -- sparse detection and the mesh's own tracking -----------------------------------------------

def test_sparse_detection_runs_the_detector_on_every_kth_frame_and_the_last():
    from facefab.face.detection import FaceDetector, detect_sparse

    frames = read_frames(str(DRIVE), fps=25.0, start=0.5, end=1.0)  # 12 or 13 frames
    detector, seen = FaceDetector(), []

    def counting(frame):
        seen.append(len(seen))
        return detector(frame)

    try:
        sparse = detect_sparse(frames, counting, every=5)
    finally:
        detector.close()
    last = len(frames) - 1
    detected = [i for i, dets in enumerate(sparse) if dets]
    assert len(sparse) == len(frames) and len(seen) == len(range(0, last, 5)) + 1
    assert detected == [*range(0, last, 5), last]  # the one face is found on each detected frame


def test_mesh_tracking_matches_per_frame_meshing(drive_track):
    # MediaPipe's video mode (the ROI from the previous landmarks) against the static mode's
    # detector on every frame: the same face, within a small fraction of the inter-ocular distance.
    row, a = drive_track
    frames = read_frames(str(DRIVE), fps=25.0, start=0.5, end=2.5)[a["frame_index"]]
    tracked, static = FaceMesher(), FaceMesher(track_roi=False)
    try:
        marks, valid = tracked.track(frames, a["bbox"])
        again, _ = tracked.track(frames[:10], a["bbox"][:10])  # a new track starts afresh
        reference, ref_valid = static.track(frames, a["bbox"])
    finally:
        tracked.close()
        static.close()
    both = valid & ref_valid
    assert both.mean() > 0.95
    iod = np.linalg.norm(reference[both, 33, :2] - reference[both, 263, :2], axis=-1)
    error = 100 * np.linalg.norm(marks[both, :, :2] - reference[both, :, :2], axis=-1) / iod[:, None]
    assert np.median(error) < 2.0 and np.percentile(error, 95) < 5.0, (np.median(error), np.percentile(error, 95))
    np.testing.assert_allclose(again, marks[:10], atol=1e-3)


def test_aligned_crops_reach_the_next_stages_from_memory(tmp_path, monkeypatch):
    # In one worker the crops AlignCrop wrote are handed on in memory: reading the crop video
    # through the frame cache decodes nothing, and gives the frames the file holds (within x264's loss).
    from facefab.media import frame_cache
    from facefab.operators.base import OperatorChain
    from facefab.operators.track_row import read_crop

    frame_cache.clear()
    row = clip_row(DRIVE, 0.5, 1.5, width=512, height=512)
    (out,) = run_local([OperatorChain(chain())], [row], RunContext(out_root=str(tmp_path)))
    assert out["status"] == "ok", out.get("error")
    n = len(unpack_arrays(out["_track"])["frame_index"])

    def no_decode(*args, **kwargs):
        raise AssertionError("the crop video was decoded again")

    monkeypatch.setattr(frame_cache, "read_frames", no_decode)
    in_memory = read_crop(out, None, n)
    monkeypatch.undo()
    assert in_memory.shape == (n, 512, 512, 3)
    assert image_psnr(in_memory, read_frames(out["crop_uri"])) > 35
    frame_cache.clear()

"""Pure face algorithms on synthetic arrays: no media, no models, milliseconds each."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from facefab.face.alignment import (
    FaceSquare,
    feathered_mask,
    invert_affines,
    paste_back,
    points_to_crop,
    umeyama_similarity,
)
from facefab.face.detection import Detection, box_iou, max_simultaneous, track_faces
from facefab.face.mesh import MEDIAPIPE_TO_68, NUM_LANDMARKS, to_68
from facefab.face.parsing import LOWER_INNER_LIP, MOUTH_CORNERS_INNER, UPPER_INNER_LIP, mouth_open_ratio
from facefab.face.pose import euler_degrees
from facefab.face.scores import av_sync_score, landmark_jitter
from facefab.face.smoothing import full_windows, moving_average

# -- smoothing ----------------------------------------------------------------------------------------


def test_moving_average_is_exact_on_lines_and_shrinks_at_the_ends():
    ramp = np.arange(20, dtype=float)[:, None] * [1.0, -2.0]
    np.testing.assert_allclose(moving_average(ramp, 5), ramp)  # a symmetric window keeps a line
    noisy = np.array([0.0, 10.0, 0.0, 10.0, 0.0])
    out = moving_average(noisy, 3)
    assert out[0] == 0.0 and out[-1] == 0.0  # window of 1 at the ends: no pull toward padding
    assert out[2] == pytest.approx(20 / 3)
    np.testing.assert_array_equal(moving_average(noisy, 1), noisy)


def test_full_windows_excludes_edges_and_frames_near_gaps():
    finite = np.ones(12, bool)
    finite[6] = False
    full = full_windows(finite, 5)
    assert full.tolist() == [False, False, True, True, False, False, False, False, False, True, False, False]
    assert not full_windows(np.ones(3, bool), 5).any()


# -- alignment ---------------------------------------------------------------------------------------

def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


def test_umeyama_recovers_a_similarity_exactly():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, (30, 2))
    truth = _similarity(0.7, 23.0, 40.0, -12.0)
    dst = src @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(umeyama_similarity(src, dst), truth, atol=1e-9)


def test_face_square_round_trips_through_its_affine():
    square = FaceSquare(center_x=300.0, center_y=200.0, half_side=80.0, angle=0.3)
    again = FaceSquare.from_affine(square.affine(512), 512)
    assert (again.center_x, again.center_y) == pytest.approx((300.0, 200.0))
    assert again.half_side == pytest.approx(80.0) and again.angle == pytest.approx(0.3)


def test_points_to_crop_maps_xy_and_scales_depth():
    affines = np.stack([_similarity(0.5, 10.0, 3.0, 4.0), _similarity(2.0, -30.0, -5.0, 1.0)])
    points = np.random.default_rng(1).uniform(0, 100, (2, 7, 3))
    out = points_to_crop(points, affines)
    for t in range(2):
        expected = cv2.transform(points[t, None, :, :2], affines[t])[0]
        np.testing.assert_allclose(out[t, :, :2], expected, atol=1e-9)
    np.testing.assert_allclose(out[:, :, 2], points[:, :, 2] * np.array([0.5, 2.0])[:, None])
    assert points_to_crop(points[..., :2], affines).shape == (2, 7, 2)
    back = points_to_crop(out[..., :2], invert_affines(affines))
    np.testing.assert_allclose(back, points[..., :2], atol=1e-9)


def test_paste_back_of_an_unedited_crop_restores_the_frame():
    rng = np.random.default_rng(2)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (200, 240, 3), np.uint8), (0, 0), 3)
    affine = _similarity(1.5, 8.0, -60.0, -40.0)
    crop = cv2.warpAffine(frame, affine, (128, 128), flags=cv2.INTER_LINEAR)
    edited = np.zeros_like(crop)
    pasted = paste_back(frame, edited, cv2.invertAffineTransform(affine))
    centre = cv2.transform(np.array([[[64.0, 64.0]]]), cv2.invertAffineTransform(affine))[0, 0].round().astype(int)
    assert pasted[centre[1], centre[0]].max() == 0  # the middle of the crop is fully pasted
    assert np.array_equal(pasted[:5, :5], frame[:5, :5])  # outside the crop nothing changes
    mask = feathered_mask(64)
    assert mask[32, 32] == 1.0 and mask[0, 0] == 0.0 and 0 < mask[32, 3] < 1


# -- detection and tracking ------------------------------------------------------------------------------

def test_box_iou():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])


def _det(x: float, y: float = 50.0, side: float = 40.0) -> Detection:
    return Detection(np.array([x, y, x + side, y + side], np.float32), 0.9)


def test_tracks_bridge_short_gaps_split_long_ones_and_keep_two_faces_apart():
    frames: list[list[Detection]] = [[_det(10 + t), _det(300 - t)] for t in range(40)]
    frames[12] = [_det(300 - 12)]  # face A missed for 2 frames: bridged
    frames[13] = [_det(300 - 13)]
    for t in range(20, 30):  # face B gone for 10 frames: its track splits
        frames[t] = [_det(10 + t)]
    tracks = track_faces(frames, max_gap_frames=5, min_track_frames=5, smooth_window=1)
    lengths = sorted(len(t) for t in tracks)
    assert lengths == [10, 20, 40]
    a = next(t for t in tracks if len(t) == 40)
    assert not a.present[12] and not a.present[13] and a.present[11]
    assert a.bbox[12, 0] == pytest.approx(22.0)  # interpolated between frames 11 and 14
    assert max_simultaneous(tracks, 40) == 2

    # joined: face B's two pieces (10 frames apart, same place) become one track; A and B stay apart
    joined = track_faces(frames, max_gap_frames=5, min_track_frames=5, smooth_window=1, join_gap_frames=12)
    assert sorted(len(t) for t in joined) == [40, 40]
    b = next(t for t in joined if t.bbox[0, 0] > 100)
    assert not b.present[20:30].any() and b.present[19] and b.present[30]
    too_far = track_faces(frames, max_gap_frames=5, min_track_frames=5, smooth_window=1, join_gap_frames=8)
    assert sorted(len(t) for t in too_far) == [10, 20, 40]  # a gap longer than join_gap_frames stays split


def test_a_face_reappearing_elsewhere_is_not_joined():
    frames: list[list[Detection]] = [[_det(10)] for _ in range(10)] + [[] for _ in range(5)] + \
        [[_det(300)] for _ in range(10)]
    assert len(track_faces(frames, max_gap_frames=2, min_track_frames=5, smooth_window=1, join_gap_frames=10)) == 2


# -- mesh tables, parsing geometry, pose, scores -----------------------------------------------------------

def test_68_point_map_is_a_subset_of_the_mesh():
    assert len(MEDIAPIPE_TO_68) == 68 and max(MEDIAPIPE_TO_68) < NUM_LANDMARKS
    points = np.random.default_rng(3).normal(size=(NUM_LANDMARKS, 3))
    np.testing.assert_array_equal(to_68(points), points[MEDIAPIPE_TO_68])


def _mouth(gap: float, width: float = 40.0) -> np.ndarray:
    points = np.zeros((NUM_LANDMARKS, 3))
    points[MOUTH_CORNERS_INNER[0], :2] = (100 - width / 2, 100)
    points[MOUTH_CORNERS_INNER[1], :2] = (100 + width / 2, 100)
    points[UPPER_INNER_LIP, :2] = (100, 100 - gap / 2)
    points[LOWER_INNER_LIP, :2] = (100, 100 + gap / 2)
    return points


def test_mouth_open_ratio_is_gap_over_width_and_scale_free():
    series = np.stack([_mouth(0.0), _mouth(10.0), _mouth(20.0, 80.0)])
    np.testing.assert_allclose(mouth_open_ratio(series), [0.0, 0.25, 0.25])
    assert np.isnan(mouth_open_ratio(np.stack([_mouth(5.0, 0.0)])))[0]


def test_euler_angles_of_single_axis_rotations():
    yaw = math.radians(20)
    about_y = np.array([[math.cos(-yaw), 0, math.sin(-yaw)], [0, 1, 0], [-math.sin(-yaw), 0, math.cos(-yaw)]])
    assert euler_degrees(about_y) == pytest.approx((20.0, 0.0, 0.0), abs=1e-9)
    roll = math.radians(-15)
    about_z = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    assert euler_degrees(about_z) == pytest.approx((0.0, 0.0, -15.0), abs=1e-9)


def test_av_sync_finds_the_lag_and_ignores_unusable_signals():
    rng = np.random.default_rng(4)
    envelope = np.convolve(rng.random(200), np.ones(5) / 5, mode="same")
    mouth = np.roll(envelope, 2)  # the mouth follows the sound 2 frames later
    r, lag = av_sync_score(mouth, envelope)
    assert r > 0.95 and lag == 2
    assert math.isnan(av_sync_score(np.zeros(200), envelope)[0])  # a closed mouth throughout
    assert math.isnan(av_sync_score(mouth[:5], envelope[:5])[0])  # too few frames


def test_landmark_jitter_grows_with_noise_and_ignores_smooth_motion():
    t = np.arange(60, dtype=float)
    base = np.zeros((60, NUM_LANDMARKS, 3))
    base[..., 0] = 200 + 2 * t[:, None]  # smooth drift
    base[..., 1] = 150
    affine = np.tile(_similarity(1.0, 0.0, 0.0, 0.0), (60, 1, 1))
    still = landmark_jitter(base, affine, 512)
    shaky = base.copy()
    shaky[..., :2] += np.random.default_rng(5).normal(0, 2.0, shaky[..., :2].shape)
    assert still == pytest.approx(0.0, abs=1e-12)
    assert landmark_jitter(shaky, affine, 512) > 0.002


def test_euler_rotation_inverts_euler_degrees():
    from facefab.face.pose import euler_degrees, euler_rotation

    for angles in [(0.0, 0.0, 0.0), (20.0, -10.0, 5.0), (-35.0, 15.0, -12.0)]:
        assert np.allclose(euler_degrees(euler_rotation(*angles)), angles, atol=1e-9)

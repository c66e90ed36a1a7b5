"""Head pose: yaw, pitch, roll and translation per frame from face-mesh landmarks.

cv2.solvePnP (SQPnP) fits a canonical 3D face to rigid mesh points (forehead, nose, eye corners,
cheekbones, temples: no lips or jaw, which move with speech) under a pinhole camera with focal
length = frame width, principal point at the frame centre and no distortion. The 3D points are
vertices of MediaPipe's canonical face model (`landmarks.CANONICAL_VERTICES`, units ~cm).

Angles (degrees): yaw > 0 turns the nose toward the image right (the subject's left), pitch > 0
raises the nose, roll > 0 tilts the face clockwise in the image. Translation (tx right, ty down,
tz away from the camera) is in canonical units, only as exact as the focal length guess.
Frames without landmarks are interpolated; the series is smoothed with a centred moving average.
`_pose` = pose (T,6) float32 [yaw, pitch, roll, tx, ty, tz].
"""

from __future__ import annotations

import cv2
import numpy as np

from .mesh import canonical_points
from .smoothing import moving_average

# Rigid mesh points only: lips, jaw and eyelids move with speech and expressions.
RIGID_INDICES = np.array([10, 151, 9, 168, 6, 197, 195, 5, 4, 1, 2, 98, 327, 33, 133, 362, 263,
                          116, 345, 127, 356, 234, 454], dtype=np.int64)
# OpenCV camera axes: x right, y down, z forward (away from the camera)
CANONICAL_FACE_CV = canonical_points(RIGID_INDICES) * [1.0, -1.0, -1.0]


def camera_matrix(width: int, height: int) -> np.ndarray:
    return np.array([[width, 0, width / 2.0], [0, width, height / 2.0], [0, 0, 1]], np.float64)


def euler_degrees(rotation: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch, roll (degrees, conventions of the module docstring) of a model->camera rotation,
    decomposed as R = Rz(roll) @ Ry(-yaw) @ Rx(-pitch)."""
    about_y = np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0))
    about_x = np.arctan2(rotation[2, 1], rotation[2, 2])
    about_z = np.arctan2(rotation[1, 0], rotation[0, 0])
    # +rotation about camera y moves the nose to the image left, about x moves it down
    return float(-np.degrees(about_y)), float(-np.degrees(about_x)), float(np.degrees(about_z))


def euler_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The model->camera rotation whose `face.pose.euler_degrees` are (yaw, pitch, roll):
    R = Rz(roll) @ Ry(-yaw) @ Rx(-pitch)."""
    y, p, r = np.radians([-yaw, -pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def head_pose(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """[yaw, pitch, roll, tx, ty, tz] for one frame's (478, 2|3) landmarks in pixels."""
    image_points = np.asarray(landmarks, np.float64)[RIGID_INDICES, :2]
    ok, rvec, tvec = cv2.solvePnP(CANONICAL_FACE_CV, image_points, camera_matrix(width, height), None,
                                  flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise ValueError("solvePnP found no head pose")
    rotation, _ = cv2.Rodrigues(rvec)
    return np.array([*euler_degrees(rotation), *tvec.ravel()], np.float64)


def pose_track(landmarks: np.ndarray, valid: np.ndarray, width: int, height: int,
               smooth_window: int = 5) -> np.ndarray:
    """(T,6) smoothed poses of a landmark track; frames without landmarks are interpolated."""
    known = np.flatnonzero(valid)
    if len(known) == 0:
        raise ValueError("no frame has landmarks to estimate a pose from")
    raw = np.stack([head_pose(landmarks[i], width, height) for i in known])
    raw[:, :3] = np.degrees(np.unwrap(np.radians(raw[:, :3]), axis=0))
    frames = np.arange(len(valid))
    dense = np.stack([np.interp(frames, known, raw[:, k]) for k in range(6)], axis=1)
    return moving_average(dense, smooth_window)

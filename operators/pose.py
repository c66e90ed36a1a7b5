"""HeadPose: yaw, pitch, roll and translation per frame from face-mesh landmarks.

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

from dataclasses import dataclass
from typing import Any

import numpy as np

from facefab.face.pose import pose_track
from facefab.media.arrays import pack_arrays, unpack_arrays

from .base import Operator, OperatorError, Resources


class HeadPose(Operator):
    """Track row with `_landmarks` -> `_pose` and per-track pose summaries."""

    name = "head_pose"
    version = "1"
    inputs = ("_landmarks",)
    outputs = ("_pose", "yaw_mean", "pitch_mean", "roll_mean", "pose_max_abs")
    default_resources = Resources(num_cpus=0.5)

    @dataclass
    class Config:
        smooth_window: int = 5

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        marks = unpack_arrays(row["_landmarks"])
        if not marks["valid"].any():
            raise OperatorError("no frame of the track has landmarks to estimate a pose from")
        width, height = _image_size(row, marks)
        pose = pose_track(marks["landmarks"], marks["valid"], width, height, self.config.smooth_window)
        yaw, pitch, roll = pose[:, 0], pose[:, 1], pose[:, 2]
        return {
            "_pose": pack_arrays(pose=pose.astype(np.float32)),
            "yaw_mean": round(float(yaw.mean()), 3),
            "pitch_mean": round(float(pitch.mean()), 3),
            "roll_mean": round(float(roll.mean()), 3),
            "pose_max_abs": round(float(np.abs(pose[:, :2]).max()), 3),
        }


def _image_size(row: dict[str, Any], marks: dict[str, np.ndarray]) -> tuple[int, int]:
    """Source frame width and height: from FaceLandmarks, else the clip row's columns."""
    width, height = marks["image_size"] if "image_size" in marks else (row["width"], row["height"])
    return int(width), int(height)


__all__ = [
    "HeadPose",
    "pose_track",
]

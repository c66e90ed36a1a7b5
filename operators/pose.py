"""The `pose` stage: track row -> `_pose` (yaw, pitch, roll, tx, ty, tz per frame) with
`facefab.face.pose` (solvePnP on rigid mesh points; conventions there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from facefab.face.pose import pose_track
from facefab.media.arrays import pack_arrays, unpack_arrays

from .base import Operator, OperatorError, Resources, register_stage


@register_stage
class HeadPose(Operator):
    """Track row with `_landmarks` -> `_pose` and per-track pose summaries."""

    name = "pose"
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

"""The `parsing` stage: per-frame label masks of a track in its aligned crop space (mesh-contour
polygons from `facefab.face.parsing` + MediaPipe selfie segmentation for hair/neck), `.npz`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from facefab.face.parsing import LABEL_NAMES, FaceContours, face_label_mask, mouth_open_ratio
from facefab.media.arrays import save_npz

from .base import Operator, Resources, register_stage
from .track_row import landmarks_in_crop, read_crop


@register_stage
class FaceParsing(Operator):
    """Label masks (see LABEL_NAMES) of every track frame, at `mask_size` in crop space.

    Artifact masks_uri (.npz): labels (T,S,S) uint8, label_names (L,) str, valid (T,) bool.
    Frames without landmarks get an all-background mask and valid=False.
    """

    name = "parsing"
    version = "1"
    inputs = ("crop_uri", "crop_size", "_landmarks", "_align")
    outputs = ("masks_uri", "mouth_open_ratio_mean")
    stateful = True
    default_resources = Resources(num_cpus=1.0)

    @dataclass
    class Config:
        mask_size: int = 256
        person_threshold: float = 0.5  # selfie-segmentation probability that counts as person
        selfie_model: int = 0  # 0: general 256x256 model, 1: landscape model

    def setup(self) -> None:
        import mediapipe as mp

        self._contours = FaceContours.from_mediapipe()
        self._segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(
            model_selection=self.config.selfie_model)

    def person_masks(self, frames: np.ndarray) -> np.ndarray:
        probs = [self._segmenter.process(frame).segmentation_mask for frame in frames]
        return np.stack(probs) > self.config.person_threshold

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        size = self.config.mask_size
        points, valid = landmarks_in_crop(row)
        points *= size / float(row["crop_size"])
        frames = read_crop(row, size, len(points), self.ctx.storage_options)
        person = self.person_masks(frames)
        labels = np.zeros((len(points), size, size), np.uint8)
        for t in np.flatnonzero(valid):
            labels[t] = face_label_mask(points[t], self._contours, size, person[t])
        uri = self.ctx.artifact_uri("masks", row["id"], ".npz")
        save_npz(uri, self.ctx.storage_options, labels=labels, label_names=np.array(LABEL_NAMES), valid=valid)
        ratios = mouth_open_ratio(points[valid])
        return {"masks_uri": uri, "mouth_open_ratio_mean": float(np.nanmean(ratios)) if valid.any() else None}


__all__ = [
    "LABEL_NAMES",
    "FaceContours",
    "FaceParsing",
    "face_label_mask",
    "landmarks_in_crop",
    "mouth_open_ratio",
    "read_crop",
]

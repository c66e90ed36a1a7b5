"""`makeup`: one reference face's makeup applied to the faces of a video.

    video_uri, reference_uri -> apply_makeup -> out_uri (ROOT/outputs/<name>.mp4)

The video loop, the reference checks and the output are `face_edit.FaceVideoEditor`'s.

- `model="weightfree"` (what "auto" runs without a checkpoint): the region colour transfer of
  `models/makeup/weightfree.py` (lips, skin, eye shadow, brows through the mesh's parsing polygons; the
  face's region colours averaged over time per track, so the look does not flicker).
- `model="beautyrec"` (or "auto" with a checkpoint): BeautyREC (`facefab.models.beautyrec`) on each frame's
  aligned face crop with the reference's aligned crop, both with their mesh parsing labels; the made-up
  crop is pasted back inside the chosen regions (`makeup.regions`), feathered, blended by `makeup.strength`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from facefab.models.makeup.weightfree import MakeupConfig, MakeupState, WeightFreeMakeup

from .base import register_stage
from .face_edit import AlignedFace, FaceEditJobConfig, FaceVideoEditor, validate


@dataclass
class MakeupJobConfig(FaceEditJobConfig):
    """Settings of a makeup job."""

    model: str = field(default="auto", metadata={
        "help": "auto (beautyrec when a checkpoint is configured, else weightfree) | weightfree | beautyrec"})
    makeup: MakeupConfig = field(default_factory=MakeupConfig)
    crop_size: int = field(default=256, metadata={"help": "aligned face crop side the neural model edits"})

    models: ClassVar[tuple[str, ...]] = ("auto", "weightfree", "beautyrec")
    section: ClassVar[str | None] = "makeup"


class NeuralMakeup:
    """A makeup pipeline (BeautyREC's call) behind the weight-free model's interface: the reference's
    aligned crop and parsing labels once; per frame the face's aligned crop made up and pasted back."""

    def __init__(self, pipeline, config: MakeupConfig, crop_size: int):
        from facefab.face.parsing import FaceContours

        self.pipeline, self.config, self.size = pipeline, config, crop_size
        self.contours = FaceContours.from_mediapipe()

    def _labels(self, face: AlignedFace) -> np.ndarray:
        from facefab.face.parsing import face_label_mask

        return face_label_mask(face.points[:, :2], self.contours, self.size)

    def look(self, image: np.ndarray, points: np.ndarray) -> tuple[AlignedFace, np.ndarray]:
        face = AlignedFace.of(image, points, self.size)
        return face, self._labels(face)

    def apply(self, frame: np.ndarray, points: np.ndarray, reference, plan) -> np.ndarray:
        import torch

        from facefab.face.colour import feathered, inter_ocular
        from facefab.face.parsing import LABELS
        from facefab.media import resize_frames
        from facefab.models.beautyrec import COMPONENTS, component_masks

        ref, ref_labels = reference
        face = AlignedFace.of(frame, points, self.size)
        labels = self._labels(face)
        made_up = self.pipeline(face.crop[None], ref.crop, labels[None], ref_labels)[0]
        if self.pipeline.size < self.size:  # the model's change over the crop's own detail finer than it sees
            seen = resize_frames(resize_frames(face.crop[None], (self.pipeline.size,) * 2), (self.size,) * 2)[0]
            made_up = np.clip(face.crop.astype(np.int16) + made_up - seen, 0, 255).astype(np.uint8)
        regions = dict(zip(COMPONENTS, component_masks(torch.from_numpy(labels[None]))[0].numpy() > 0.5,
                           strict=True))
        regions["brows"] = np.isin(labels, (LABELS["left_brow"], LABELS["right_brow"]))
        chosen = np.any([regions[name] for name in self.config.region_list()], axis=0)
        mask = feathered(chosen, 0.08 * inter_ocular(face.points)) * self.config.strength
        return face.pasted(frame, made_up, mask)


@register_stage
class ApplyMakeup(FaceVideoEditor):
    """(video_uri, reference_uri) -> the made-up mp4 at `out_uri`."""

    name = "apply_makeup"
    version = "1"
    model_name = "beautyrec"
    model_label = "weightfree-makeup"
    Config = MakeupJobConfig

    def weightfree(self):
        return WeightFreeMakeup(self.config.makeup)

    def neural(self, pipeline):
        return NeuralMakeup(pipeline, self.config.makeup, self.config.crop_size)

    def prepare(self, image: np.ndarray, points: np.ndarray):
        return self.model.look(image, points)

    def plan_track(self, reference, track) -> MakeupState | None:
        return MakeupState() if self.weight_free else None

    def edit(self, frame, points, reference, plan, step) -> np.ndarray:
        return self.model.apply(frame, points, reference, plan)


__all__ = ["ApplyMakeup", "MakeupJobConfig", "validate"]

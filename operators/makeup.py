"""`makeup`: one reference face's makeup applied to the faces of a video.

    video_uri, reference_uri -> apply_makeup -> out_uri (ROOT/outputs/<name>.mp4)

The video loop, the reference checks and the output are `face_edit.FaceVideoEditor`'s.

- `model="weightfree"` (what "auto" runs): the region colour transfer of `models/makeup/weightfree.py`
  (lips, skin, eye shadow, brows through the mesh's parsing polygons; the face's region colours
  averaged over time per track, so the look does not flicker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from facefab.models.makeup.weightfree import MakeupConfig, MakeupState, WeightFreeMakeup

from .base import register_stage
from .face_edit import FaceEditJobConfig, FaceVideoEditor, validate


@dataclass
class MakeupJobConfig(FaceEditJobConfig):
    """Settings of a makeup job."""

    makeup: MakeupConfig = field(default_factory=MakeupConfig)

    section: ClassVar[str | None] = "makeup"


@register_stage
class ApplyMakeup(FaceVideoEditor):
    """(video_uri, reference_uri) -> the made-up mp4 at `out_uri`."""

    name = "apply_makeup"
    version = "1"
    model_name = "beautyrec"
    model_label = "weightfree-makeup"
    Config = MakeupJobConfig

    def load_default(self):
        return WeightFreeMakeup(self.config.makeup)

    def prepare(self, image: np.ndarray, points: np.ndarray):
        return self.model.look(image, points)

    def plan_track(self, reference, track) -> MakeupState:
        return MakeupState()

    def edit(self, frame, points, reference, plan, step) -> np.ndarray:
        return self.model.apply(frame, points, reference, plan)


__all__ = ["ApplyMakeup", "MakeupJobConfig", "validate"]

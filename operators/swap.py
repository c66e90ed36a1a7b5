"""`swap`: the reference (source) face on the faces of a video, following their pose and expression.

    video_uri, reference_uri -> swap_face -> out_uri (ROOT/outputs/<name>.mp4)

The video loop, the reference checks and the output are `face_edit.FaceVideoEditor`'s.

- `model="weightfree"` (what "auto" runs): the mesh swap of `models/swap/weightfree.py` (the source's
  face shape with the video face's pose and expression, its texture warped per mesh triangle, relit and
  colour-matched to the video face, blended inside the face's outline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from facefab.models.swap.weightfree import SwapConfig, WeightFreeSwap

from .base import register_stage
from .face_edit import FaceEditJobConfig, FaceVideoEditor, validate


@dataclass
class SwapJobConfig(FaceEditJobConfig):
    """Settings of a face-swap job."""

    mode: str = field(default="swap", metadata={
        "help": "swap: the source's face on the video's faces; reenact: the source portrait moved like the "
                "video's largest face (its pose and expression), written at the portrait's size"})
    swap: SwapConfig = field(default_factory=SwapConfig)

    section: ClassVar[str | None] = "swap"

    def reenact_config(self):
        """The `animate --driving` settings `mode="reenact"` runs: the whole portrait (paste_back), moved
        relative to the video face's first frame."""
        from .reenact import ReenactJobConfig

        return ReenactJobConfig(
            model="weightfree" if self.model == "auto" and not self.checkpoint else self.model,
            checkpoint=self.checkpoint, device=self.device, dtype=self.dtype, cache_dir=self.cache_dir,
            paste_back=True, relative=True, face_index=self.face_index, max_duration=self.max_duration, crf=self.crf,
            watermark=self.watermark, landmarks=self.landmarks)


@register_stage
class SwapFace(FaceVideoEditor):
    """(video_uri, reference_uri) -> the face-swapped mp4 at `out_uri`."""

    name = "swap_face"
    version = "1"
    model_name = "face-adapter"
    model_label = "weightfree-swap"
    Config = SwapJobConfig

    def load_default(self):
        return WeightFreeSwap(self.config.swap)

    def prepare(self, image: np.ndarray, points: np.ndarray):
        return self.model.source(image, points)

    def plan_track(self, reference, track):
        return self.model.plan(reference, track.landmarks)

    def edit(self, frame, points, reference, plan, step) -> np.ndarray:
        return self.model.render(frame, points, reference, plan, step)


def validate_swap(config: SwapJobConfig) -> None:
    validate(config)
    if config.mode not in ("swap", "reenact"):
        raise ValueError(f"mode must be swap or reenact, got {config.mode!r}")
    if config.mode == "reenact" and config.track not in ("all", "largest"):
        raise ValueError("--mode reenact follows the video's largest face; --track does not apply")


__all__ = ["SwapFace", "SwapJobConfig", "validate_swap"]

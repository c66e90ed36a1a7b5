"""`swap`: the reference (source) face on the faces of a video, following their pose and expression.

    video_uri, reference_uri -> swap_face -> out_uri (ROOT/outputs/<name>.mp4)

The video loop, the reference checks and the output are `face_edit.FaceVideoEditor`'s.

- `model="weightfree"` (what "auto" runs without a checkpoint): the mesh swap of
  `models/swap/weightfree.py` (the source's face shape with the video face's pose and expression, its
  texture warped per mesh triangle, relit and colour-matched to the video face, blended inside the face's
  outline).
- `model="face-adapter"` (or "auto" with a checkpoint): Face-Adapter (`facefab.models.face_adapter`) in
  swap mode on each frame's aligned face crop with the source's aligned crop; the generated crop is pasted
  back inside the face's outline, feathered.

`mode="reenact"` is not this stage: the swap journey then runs `reenact.ReenactPortrait`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from facefab.models.swap.weightfree import SwapConfig, WeightFreeSwap

from .base import register_stage
from .face_edit import AlignedFace, FaceEditJobConfig, FaceVideoEditor, validate


@dataclass
class SwapJobConfig(FaceEditJobConfig):
    """Settings of a face-swap job."""

    model: str = field(default="auto", metadata={
        "help": "auto (face-adapter when a checkpoint is configured, else weightfree) | weightfree | face-adapter"})
    crop_size: int = field(default=256, metadata={"help": "aligned face crop side the neural model works on"})
    steps: int | None = field(default=None, metadata={"help": "denoising steps (None: the model's own)"})
    seed: int = 0

    models: ClassVar[tuple[str, ...]] = ("auto", "weightfree", "face-adapter")

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
            model=self.model,
            checkpoint=self.checkpoint, device=self.device, dtype=self.dtype, cache_dir=self.cache_dir,
            paste_back=True, relative=True, face_index=self.face_index, max_duration=self.max_duration, crf=self.crf,
            watermark=self.watermark, landmarks=self.landmarks, steps=self.steps, seed=self.seed)


class NeuralSwap:
    """A swap pipeline (Face-Adapter's call, swap mode) behind the weight-free model's interface: the
    source's aligned crop once; per frame the face's aligned crop generated with the source identity and
    pasted back inside the face's outline."""

    def __init__(self, pipeline, config: SwapJobConfig):
        from facefab.face.parsing import FaceContours

        self.pipeline, self.config, self.size = pipeline, config, config.crop_size
        self.contours = FaceContours.from_mediapipe()

    def source(self, image: np.ndarray, points: np.ndarray) -> AlignedFace:
        return AlignedFace.of(image, points, self.size)

    def plan(self, source: AlignedFace, meshes: np.ndarray) -> None:
        return None

    def render(self, frame: np.ndarray, points: np.ndarray, source: AlignedFace, plan, step: int) -> np.ndarray:
        import cv2

        from facefab.face.colour import feathered, inter_ocular

        c, face = self.config, AlignedFace.of(frame, points, self.size)
        swapped = self.pipeline(source.crop, face.crop[None], face.points[None].astype(np.float32), mode="swap",
                                source_landmarks=source.points.astype(np.float32), steps=c.steps, seed=c.seed)[0]
        outline = np.zeros((self.size, self.size), np.uint8)
        cv2.fillPoly(outline, [np.round(face.points[self.contours.face_oval, :2]).astype(np.int32)], 1)
        return face.pasted(frame, swapped, feathered(outline.astype(bool), 0.15 * inter_ocular(face.points)))


@register_stage
class SwapFace(FaceVideoEditor):
    """(video_uri, reference_uri) -> the face-swapped mp4 at `out_uri`."""

    name = "swap_face"
    version = "2"  # 2: a fringed source's face ends at the eyes
    model_name = "face-adapter"
    model_label = "weightfree-swap"
    Config = SwapJobConfig

    def weightfree(self):
        return WeightFreeSwap(self.config.swap)

    def neural(self, pipeline):
        return NeuralSwap(pipeline, self.config)

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

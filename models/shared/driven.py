"""The inference interface of the video-driven (reenactment) pipelines (face-vid2vid, and the
diffusion family that follows), which `facefab animate --driving VIDEO --model <name> --checkpoint DIR`
calls (facefab.operators.reenact)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class DrivenPipeline(Protocol):
    size: int  # native square resolution of the crops it takes and makes

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "auto", dtype: str = "auto") -> DrivenPipeline:
        """Load from a local save_pretrained folder (remote URIs are resolved by the caller)."""
        ...

    def save_pretrained(self, folder: str) -> None:
        ...

    def __call__(self, reference: np.ndarray, points: np.ndarray, driving: np.ndarray, driving_points: np.ndarray, *,
                 relative: bool = True, steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """reference (S,S,3) uint8 RGB: an aligned face crop framed as the preprocess `align` stage frames
        crop_uri, S == size; points (478,2) its MediaPipe mesh in crop pixels.
        driving (N,S,S,3) uint8 RGB: the driving video's frames through ONE fixed crop (the alignment of its
        first frame with a face), so the head's own motion (turns, roll, shifts) stays visible in them;
        driving_points (N,478,2) their meshes in those crop pixels (NaN rows: no face in that frame).
        relative: apply the driving motion relative to its first frame (the reference keeps its own face
        shape and pose); False: the driving frame's absolute pose/expression.
        Returns (N,S,S,3) uint8 RGB frames."""
        ...


__all__ = ["DrivenPipeline"]

"""The inference interface of the audio-driven talking-head pipelines (Hallo, V-Express, GAIA), which
`facefab animate --model <name> --checkpoint DIR` calls (facefab.operators.animate)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class TalkingPipeline(Protocol):
    size: int  # native square resolution of the crops it takes and makes

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "auto", dtype: str = "auto") -> TalkingPipeline:
        """Load from a local save_pretrained folder (remote URIs are resolved by the caller)."""
        ...

    def save_pretrained(self, folder: str) -> None:
        ...

    def __call__(self, reference: np.ndarray, points: np.ndarray, audio: np.ndarray, fps: float, num_frames: int, *,
                 pose: np.ndarray | None = None, steps: int | None = None, guidance_scale: float | None = None,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """reference (S,S,3) uint8 RGB: an aligned face crop framed as the preprocess `align` stage frames
        crop_uri (FFHQ framing), S == size; points (478,2) its MediaPipe mesh in crop pixels; audio float32
        mono 16 kHz; pose (num_frames,3) yaw/pitch/roll degrees to follow, as offsets from the reference's
        own pose (0: as in the portrait), or None (the model's own motion).
        Returns (num_frames,S,S,3) uint8 RGB frames."""
        ...


__all__ = ["TalkingPipeline"]

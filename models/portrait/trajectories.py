"""Weight-free trajectory animation: a still image moved along sparse point tracks (the control MOFA-Video
takes), by turning the tracks into a dense motion field and warping.

Per output frame, the tracked points' displacement from where they start (their position on the image)
is interpolated over the whole picture with a thin-plate spline (smooth, exact at the points, held
still along the image border), solved on a coarse grid and upsampled, and the image is warped backward
through it. A point a track does not see at some frame (NaN) drops out of that frame's spline.

Tracks come as (K, N, 2) image-pixel positions, K points over N frames; frame 0 is where each point
sits on the image (a track that starts later is placed where it is first seen).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class TrajectoryConfig:
    grid_step: int = 8  # the field is solved every this many pixels, then upsampled
    smoothing: float = 0.5  # thin-plate spline smoothing (0: exact at every tracked point)
    border_points: int = 8  # held points per image side (the frame's edge does not move)


def border_anchors(height: int, width: int, per_side: int) -> np.ndarray:
    """(4 * per_side, 2) points spread along the image border."""
    t = np.linspace(0.0, 1.0, per_side, endpoint=False)
    x, y = (width - 1) * t, (height - 1) * t
    return np.concatenate([np.stack([x, np.zeros_like(x)], 1), np.stack([np.full_like(y, width - 1), y], 1),
                           np.stack([width - 1 - x, np.full_like(x, height - 1)], 1),
                           np.stack([np.zeros_like(y), height - 1 - y], 1)])


def dense_backward_flow(sources: np.ndarray, targets: np.ndarray, shape: tuple[int, int],
                        config: TrajectoryConfig | None = None) -> np.ndarray:
    """(H, W, 2) float32 field f with output(x) = image(x + f(x)): the image content at `sources` (K, 2)
    lands on `targets` (K, 2), interpolated by a thin-plate spline held at zero along the border."""
    from scipy.interpolate import RBFInterpolator

    config = config or TrajectoryConfig()
    height, width = shape
    anchors = border_anchors(height, width, config.border_points)
    points = np.concatenate([np.asarray(targets, np.float64), anchors])
    values = np.concatenate([np.asarray(sources, np.float64) - targets, np.zeros_like(anchors)])
    step = max(1, int(config.grid_step))
    ys, xs = np.arange(0, height - 1 + step, step), np.arange(0, width - 1 + step, step)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float64)
    spline = RBFInterpolator(points, values, kernel="thin_plate_spline", smoothing=config.smoothing)
    coarse = spline(grid).reshape(len(ys), len(xs), 2).astype(np.float32)
    # bilinear upsampling with the grid's nodes on their pixels (cv2.resize would shift them by half a cell)
    px, py = np.meshgrid(np.arange(width, dtype=np.float32) / step, np.arange(height, dtype=np.float32) / step)
    return cv2.remap(coarse, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def starts(tracks: np.ndarray) -> np.ndarray:
    """(K, 2) where each track sits on the image: its first seen position."""
    seen = np.isfinite(tracks).all(axis=-1)
    first = np.argmax(seen, axis=1)
    return tracks[np.arange(len(tracks)), first]


class TrajectoryAnimation:
    """The weight-free trajectory animation. Holds settings only; `plan` then `render` per frame."""

    name = "weightfree"

    def __init__(self, config: TrajectoryConfig | None = None):
        self.config = config or TrajectoryConfig()

    def plan(self, tracks: np.ndarray) -> np.ndarray:
        """(K, N, 2) tracks with at least one seen position each (ValueError otherwise)."""
        tracks = np.asarray(tracks, np.float64)
        if tracks.ndim != 3 or tracks.shape[-1] != 2 or not len(tracks) or tracks.shape[1] < 1:
            raise ValueError(f"trajectories must be (tracks, frames, 2) positions, got shape {tracks.shape}")
        seen = np.isfinite(tracks).all(axis=-1).any(axis=1)
        if not seen.all():
            raise ValueError(f"{int((~seen).sum())} of {len(tracks)} trajectories have no position in any frame")
        return tracks

    def render(self, tracks: np.ndarray, t: int, image: np.ndarray) -> np.ndarray:
        """Frame t (H, W, 3): the image with every track's start moved to its frame-t position."""
        sources, targets = starts(tracks), tracks[:, t]
        use = np.isfinite(targets).all(axis=1)
        if not use.any() or np.allclose(sources[use], targets[use], atol=0.05):
            return image
        height, width = image.shape[:2]
        field = dense_backward_flow(sources[use], targets[use], (height, width), self.config)
        xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        return cv2.remap(image, xs + field[..., 0], ys + field[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)


__all__ = ["TrajectoryAnimation", "TrajectoryConfig", "border_anchors", "dense_backward_flow", "starts"]

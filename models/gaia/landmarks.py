"""The landmark image GAIA's motion encoder reads: a frame's 478-point MediaPipe mesh drawn on black.

The whole tesselation is drawn dim (the head's 3-D turn shows in how its triangles foreshorten), the
part contours on top in their own colours (face oval, brows, eyes, irises, nose, lips), so the small
motions that matter for speech (lips, lids, gaze) stand out at low resolution.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from ..shared.latents import to_unit

TESSELATION_GREY = 70
# (connection set name in mediapipe.solutions.face_mesh_connections, RGB)
PART_COLOURS = (
    ("FACEMESH_FACE_OVAL", (255, 255, 255)),
    ("FACEMESH_LEFT_EYEBROW", (255, 160, 0)),
    ("FACEMESH_RIGHT_EYEBROW", (0, 160, 255)),
    ("FACEMESH_NOSE", (200, 200, 0)),
    ("FACEMESH_LEFT_EYE", (255, 60, 60)),
    ("FACEMESH_RIGHT_EYE", (60, 60, 255)),
    ("FACEMESH_LEFT_IRIS", (255, 0, 255)),
    ("FACEMESH_RIGHT_IRIS", (0, 255, 255)),
    ("FACEMESH_LIPS", (60, 255, 60)),
)
_SHIFT = 4  # sub-pixel vertex precision of cv2 drawing


@functools.cache
def _edges() -> tuple[np.ndarray, tuple[tuple[np.ndarray, tuple[int, int, int]], ...]]:
    """(tesselation edges (E,2), ((part edges, colour), ...)) as vertex index arrays."""
    import mediapipe as mp

    conn = mp.solutions.face_mesh_connections

    def as_array(edges) -> np.ndarray:
        return np.array(sorted(edges), np.int64)

    return as_array(conn.FACEMESH_TESSELATION), tuple((as_array(getattr(conn, name)), colour)
                                                     for name, colour in PART_COLOURS)


def line_width(size: int) -> int:
    return max(1, round(size / 128))


def landmark_image(points: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB drawing of one frame's (478, >=2) mesh in pixels of a size-px crop.
    A frame without landmarks (any NaN) is drawn black."""
    image = np.zeros((size, size, 3), np.uint8)
    xy = np.asarray(points, np.float64)[:, :2]
    if not np.isfinite(xy).all():
        return image
    fixed = np.round(xy * (1 << _SHIFT)).astype(np.int32)
    tesselation, parts = _edges()
    width = line_width(size)
    cv2.polylines(image, list(fixed[tesselation]), False, (TESSELATION_GREY,) * 3, 1, cv2.LINE_AA, _SHIFT)
    for edges, colour in parts:
        cv2.polylines(image, list(fixed[edges]), False, colour, width, cv2.LINE_AA, _SHIFT)
    return image


def landmark_batch(points: np.ndarray | torch.Tensor, size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(N, 478, >=2) meshes in pixels -> (N, 3, size, size) landmark images in [-1, 1] (the motion
    encoder's input)."""
    points = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    images = np.stack([landmark_image(p, size) for p in points.reshape(-1, *points.shape[-2:])])
    return to_unit(images, device, dtype)


__all__ = ["landmark_batch", "landmark_image", "line_width"]

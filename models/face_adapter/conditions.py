"""The Spatial Condition Generator's images and masks, from facefab's 478-point MediaPipe meshes (x, y in the
image's pixels; z unused: the projection of the 3D landmarks is their x, y):

- `landmark_image`: the official draw_pts70_batch: the 68 iBUG points and the two gaze points (here the
  mesh's iris centres 468 / 473) as filled dots on black, coloured along matplotlib's "rainbow" map by
  index (radius 2 px at 256 px). The official projects a 3DMM with the source's identity coefficients and
  the target's pose and expression; facefab draws the target's own mesh (no 3DMM fit).
- `face_hull` / `adapting_area`: the mesh's convex hull, grown by `dilate` of the size: the adapting area of
  a swap (the official face parsing mask dilated), and for a reenactment's training target the union of the
  source's and the target's.
- `blend_mask`: the official soft outward edge (max-pool then average-pool by 2 * feather + 1): the result
  replaces the base image inside, the base stays exactly as it was beyond mask + 2 * feather.
- `spatial_condition`: landmark image inside the area, the background image outside it (the ControlNet's
  input: the target's own frame for a swap, the source for a reenactment).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from facefab.face.mesh import MEDIAPIPE_TO_68

GAZE_POINTS = (468, 473)  # the iris centres: the official's two gaze points after the 68
POINTS70 = np.concatenate([MEDIAPIPE_TO_68, GAZE_POINTS])


def rainbow(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB of matplotlib's "rainbow" colormap at linspace(0, 1, n)."""
    x = np.linspace(0.0, 1.0, n)
    rgb = np.stack([np.abs(2 * x - 1), np.sin(np.pi * x), np.cos(np.pi * x / 2)], axis=1)
    return (255 * np.clip(rgb, 0, 1)).astype(np.uint8)


_COLOURS = rainbow(len(POINTS70))


def landmark_image(points: np.ndarray, size: int, radius: float = 2 / 256) -> np.ndarray:
    """(size, size, 3) uint8 RGB: one (478, 2+) mesh's 70 points as rainbow dots (see the module docstring)."""
    canvas = np.zeros((size, size, 3), np.uint8)
    pts = np.asarray(points, np.float64)[POINTS70, :2]
    r = max(1, round(radius * size))
    for (x, y), colour in zip(pts, _COLOURS):
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(canvas, (round(x), round(y)), r, tuple(int(c) for c in colour), -1)
    return canvas


def face_hull(points: np.ndarray, size: int, dilate: float = 0.0) -> np.ndarray:
    """(size, size) float32 0/1: the (478, 2+) mesh's convex hull grown by `dilate` * size (zeros without a mesh)."""
    mask = np.zeros((size, size), np.uint8)
    pts = np.asarray(points, np.float64)[:, :2]
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) >= 3:
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts).astype(np.int32)), 1)
    grow = round(dilate * size)
    if grow > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
    return mask.astype(np.float32)


def adapting_area(*meshes: np.ndarray, size: int, dilate: float) -> np.ndarray:
    """The union of the meshes' dilated hulls."""
    return np.maximum.reduce([face_hull(m, size, dilate) for m in meshes])


def blend_mask(mask: np.ndarray, feather: float) -> np.ndarray:
    """(H, W) float32 in [0, 1]: `mask` grown by `feather` * H, then box-blurred as wide (the official
    max_pool2d(17) then avg_pool2d(17) at 512 px)."""
    k = 2 * max(1, round(feather * mask.shape[0])) + 1
    grown = cv2.dilate(mask.astype(np.float32), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return cv2.blur(grown, (k, k), borderType=cv2.BORDER_CONSTANT)


def spatial_condition(landmarks: torch.Tensor, area: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) landmark images and backgrounds in [-1, 1], (B, 1, H, W) area -> the ControlNet input."""
    return landmarks * area + background * (1 - area)


__all__ = ["GAZE_POINTS", "POINTS70", "adapting_area", "blend_mask", "face_hull", "landmark_image", "rainbow",
           "spatial_condition"]

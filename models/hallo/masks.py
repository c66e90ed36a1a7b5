"""Hallo's face masks, made from the MediaPipe mesh (the official hallo/utils/util.py get_mask steps):

- the face box: the box of the face-oval points (`FaceContours.face_oval`, the official silhouette ids)
  expanded `face_expand` times about its centre and shifted inside the image; as a 0/1 image it is the
  face locator's input (the official `face_mask`);
- the lip box: the same for the outer-lip points, expanded `lip_expand` times;
- region masks (3, M, M) in [0, 1] weighting the audio attention (the official full / face / lip masks):
  both boxes drawn at M px and Gaussian-blurred (face `face_blur`, lip `lip_blur` px kernels, min-max
  normalised), then pose = 1 - face, face = face - lip, lip = lip.

A clip's boxes are the union of its frames' boxes (the official union masks of a training video).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=1)
def _contour_ids() -> tuple[np.ndarray, np.ndarray]:
    from facefab.face.parsing import FaceContours

    contours = FaceContours.from_mediapipe()
    return np.asarray(contours.face_oval), np.asarray(contours.outer_lips)


def expanded_box(points: np.ndarray, ratio: float, size: int) -> np.ndarray:
    """[x0, y0, x1, y1] (int px) of `points` (N, 2), scaled `ratio` times about its centre and moved
    (not cut) to lie inside the size x size image (the official expand_region)."""
    lo, hi = np.nanmin(points, axis=0), np.nanmax(points, axis=0)
    mid, half = np.floor((lo + hi) / 2), np.floor((hi - lo) * ratio) // 2
    x0, y0 = mid - half
    x1, y1 = mid + half
    shift = np.array([max(0.0, -x0) - max(0.0, x1 - size), max(0.0, -y0) - max(0.0, y1 - size)])
    box = np.array([x0, y0, x1, y1]) + np.tile(shift, 2)
    return np.clip(np.round(box), 0, size).astype(np.int64)


def region_boxes(mesh: np.ndarray, size: int, face_expand: float = 1.2, lip_expand: float = 2.0,
                 **_) -> tuple[np.ndarray, np.ndarray]:
    """(face box, lip box) of one (478, 2) mesh or the union over (T, 478, 2) meshes (frames with NaN
    points are skipped), in pixels of the size x size image the points are in."""
    mesh = np.asarray(mesh, np.float64)
    mesh = mesh[None] if mesh.ndim == 2 else mesh
    mesh = mesh[np.isfinite(mesh[..., :2]).all(axis=(1, 2))]
    if not len(mesh):
        raise ValueError("no frame with a complete face mesh")
    oval, lips = _contour_ids()
    faces = np.stack([expanded_box(m[oval, :2], face_expand, size) for m in mesh])
    mouths = np.stack([expanded_box(m[lips, :2], lip_expand, size) for m in mesh])

    def union(boxes):
        return np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)])

    return union(faces), union(mouths)


def box_image(box: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32: 1 inside the [x0, y0, x1, y1] box, else 0."""
    image = np.zeros((size, size), np.float32)
    x0, y0, x1, y1 = (int(v) for v in box)
    image[y0:y1, x0:x1] = 1.0
    return image


def _blurred(box: np.ndarray, size: int, mask_size: int, kernel: int) -> np.ndarray:
    small = cv2.resize(box_image(box, size), (mask_size, mask_size), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small, (kernel, kernel), 0)
    lo, hi = float(blurred.min()), float(blurred.max())
    return (blurred - lo) / (hi - lo) if hi > lo else blurred


def region_masks(face_box: np.ndarray, lip_box: np.ndarray, size: int, mask_size: int = 64, face_blur: int = 51,
                 lip_blur: int = 31, **_) -> np.ndarray:
    """(3, mask_size, mask_size) float32 pose / face / lip weights of the audio attention."""
    face = _blurred(face_box, size, mask_size, face_blur)
    lip = _blurred(lip_box, size, mask_size, lip_blur)
    return np.stack([1.0 - face, np.clip(face - lip, 0.0, 1.0), lip]).astype(np.float32)


__all__ = ["box_image", "expanded_box", "region_boxes", "region_masks"]

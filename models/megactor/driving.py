"""MegActor's inputs drawn from images and meshes, as the official eval.py / face_dataset.py prepare them:

- the driving frames (`driving_frames`): the official drives with raw video, but only its face region:
  `crop_move_face` keeps each frame's face box (squared, raised by `top_margin` and lowered by
  `bottom_margin` of its height) and paints the rest black, then the frame is turned grey (ITU-R BT.601
  weights, three equal channels) so the driver's colours do not leak. The official takes the box from a
  RetinaFace detection per frame (the previous frame's where none); here from the frame's 478-point mesh
  (frames without one interpolated). With `contour_preserve` (the official --contour-preserve, facefab's
  `relative=True`): only patches around the eyes, the mouth and the brows (the 68-point groups 36-41,
  42-47, 48-67, 17-26; half-size = size / `patch_div`, each the union over the clip) are kept, and the
  frames are moved by the affine that takes the first driving face's landmark box onto the reference's,
  so the portrait keeps its own face shape and place.
- the reference's background (`background_mask`): the official densepose "background_mask" (where no
  person is) is the fourth concatenated input channel, and the reference times it is the image CLIP sees
  (clip_image_type "background"). Without densepose, the person is drawn from the mesh: the head (an
  ellipse around the face, raised for the hair) and the neck and shoulders below it.
"""

from __future__ import annotations

import cv2
import numpy as np

from facefab.face.mesh import MEDIAPIPE_TO_68
from facefab.face.smoothing import fill_missing

GREY = np.array([0.2989, 0.5870, 0.1140], np.float32)  # the official color_BW_weights
PATCH_GROUPS = ((36, 42), (42, 48), (48, 68), (17, 27))  # eyes, mouth, brows (the official contour patches)


def face_boxes(points: np.ndarray, size: int, top_margin: float = 0.4, bottom_margin: float = 0.1) -> np.ndarray:
    """(N, 478, 2) meshes (NaN rows allowed) -> (N, 4) int boxes (left, top, right, bottom) in a size x size
    frame: the mesh's box made square about its centre, `top_margin` / `bottom_margin` of its height added
    above / below (the official crop_move_face), clipped to the frame."""
    filled, _ = fill_missing(np.asarray(points, np.float32)[..., :2])
    lo, hi = filled.min(axis=1), filled.max(axis=1)
    centre, half = (lo + hi) / 2, (hi - lo).max(axis=1, keepdims=True) / 2
    left, top = (centre - half).T
    right, bottom = (centre + half).T
    height = bottom - top
    top, bottom = top - top_margin * height, bottom + bottom_margin * height
    boxes = np.stack([left, top, right, bottom], axis=1)
    return np.clip(np.round(boxes), 0, size).astype(int)


def greyscale(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> the same, every channel the BT.601 luma."""
    luma = np.clip(frames.astype(np.float32) @ GREY, 0, 255).round().astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=-1)


def keep_boxes(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Black outside each frame's box."""
    out = np.zeros_like(frames)
    for frame, dst, (left, top, right, bottom) in zip(frames, out, boxes):
        dst[top:bottom, left:right] = frame[top:bottom, left:right]
    return out


def _ibug(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float32)[..., MEDIAPIPE_TO_68, :2]


def contour_patches(frames: np.ndarray, points: np.ndarray, reference_points: np.ndarray,
                    patch_div: int = 8) -> np.ndarray:
    """The official contour-preserving driving frames: the eye / mouth / brow patches (their union over
    the clip) kept, the rest black, moved so the first driving face's landmark box lands on the reference's."""
    n, size = len(frames), frames.shape[1]
    ldm, _ = fill_missing(_ibug(points))
    half = size / patch_div
    keep = np.zeros((size, size), bool)
    for begin, end in PATCH_GROUPS:
        centres = ldm[:, begin:end].mean(axis=1)
        lo = np.clip(np.floor(centres.min(axis=0) - half), 0, size).astype(int)
        hi = np.clip(np.ceil(centres.max(axis=0) + half), 0, size).astype(int)
        keep[lo[1]:hi[1], lo[0]:hi[0]] = True
    masked = frames * keep[None, :, :, None]

    def corners(p: np.ndarray) -> np.ndarray:  # (left, top), (right, bottom), (left, bottom)
        (left, top), (right, bottom) = p.min(axis=0), p.max(axis=0)
        return np.float32([[left, top], [right, bottom], [left, bottom]])

    affine = cv2.getAffineTransform(corners(ldm[0]), corners(_ibug(reference_points)))
    return np.stack([cv2.warpAffine(np.ascontiguousarray(f), affine, (size, size)) for f in masked[:n]])


def driving_frames(frames: np.ndarray, points: np.ndarray, reference_points: np.ndarray | None = None, *,
                   contour_preserve: bool = False, top_margin: float = 0.4, bottom_margin: float = 0.1,
                   patch_div: int = 8) -> np.ndarray:
    """(N, S, S, 3) uint8 driving crops + (N, 478, 2) meshes -> the grey face-region frames the driving
    encoder sees (see the module docstring); `contour_preserve` needs the reference's mesh."""
    frames = np.asarray(frames)
    if contour_preserve:
        if reference_points is None:
            raise ValueError("contour-preserving driving frames need the reference's mesh")
        kept = contour_patches(frames, points, reference_points, patch_div)
    else:
        kept = keep_boxes(frames, face_boxes(points, frames.shape[1], top_margin, bottom_margin))
    return greyscale(kept)


def person_mask(points: np.ndarray, size: int) -> np.ndarray:
    """(478, 2) mesh -> (size, size) float32, 1 on the person (head with hair, neck, shoulders), 0 elsewhere."""
    p = np.asarray(points, np.float32)[..., :2]
    (left, top), (right, bottom) = p.min(axis=0), p.max(axis=0)
    w, h = right - left, bottom - top
    cx, cy = (left + right) / 2, (top + bottom) / 2
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (round(float(cx)), round(float(cy - 0.12 * h))), (round(float(0.72 * w)), round(float(0.68 * h))),
                0, 0, 360, 1, -1)
    body = np.array([[cx - 0.35 * w, cy + 0.3 * h], [cx + 0.35 * w, cy + 0.3 * h], [cx + 1.3 * w, size + h],
                     [cx - 1.3 * w, size + h]])
    cv2.fillPoly(mask, [np.round(body).astype(np.int32)], 1)
    return mask.astype(np.float32)


def background_mask(points: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32: 1 where the reference shows background (the official "background_mask")."""
    return 1.0 - person_mask(points, size)


__all__ = ["GREY", "PATCH_GROUPS", "background_mask", "contour_patches", "driving_frames", "face_boxes", "greyscale",
           "keep_boxes", "person_mask"]

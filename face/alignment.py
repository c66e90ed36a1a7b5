"""The one alignment transform: FFHQ-framed aligned square face crops of a track, without jitter.

Per frame, a similarity transform (rotation, uniform scale, translation) is the least-squares
(Umeyama) fit of rigid mesh points (eye corners, nose, lower forehead, cheekbones) to a template:
MediaPipe's canonical face, frontal, framed by the FFHQ rule (Karras et al. 2019, ffhq-dataset
`recreate_aligned_images`: a square from the eye centres and the mouth centre). So crops look like
FFHQ, but an opening mouth or blinking eyes do not zoom or shift them, as they would with the
per-frame FFHQ rule. `crop_scale` > 1 widens the crop (more context), < 1 tightens it.

The per-frame parameters (centre x/y, log half-side, angle) are interpolated over frames without
landmarks and smoothed with a centred moving average before the crop is built: smoothing the
transform rather than the pixels keeps crops sharp while removing landmark jitter.

Output: `_align` = (affine (T,2,3) frame->crop, inverse (T,2,3) crop->frame), the aligned crop
video at `crop_uri` (H.264, clip fps, 16 kHz mono AAC when the clip has audio), and `crop_size`.
`warp_to_crop` and `paste_back` (feathered) are the pair generators use to go to the crop and
back.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .mesh import IBUG_LEFT_EYE, IBUG_RIGHT_EYE, MEDIAPIPE_TO_68, canonical_points
from .smoothing import moving_average

AUDIO_RATE = 16000


# -- the similarity transform ----------------------------------------------------------------

@dataclass(frozen=True)
class FaceSquare:
    """An oriented square in the frame: centre, half side length, angle of its x axis (rad)."""

    center_x: float
    center_y: float
    half_side: float
    angle: float

    def affine(self, size: int) -> np.ndarray:
        """(2,3) frame -> crop affine mapping this square onto a size x size crop."""
        k = size / (2.0 * self.half_side)
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        linear = k * np.array([[cos, sin], [-sin, cos]])
        offset = np.array([size / 2.0, size / 2.0]) - linear @ np.array([self.center_x, self.center_y])
        return np.hstack([linear, offset[:, None]])

    @classmethod
    def from_affine(cls, affine: np.ndarray, size: int) -> FaceSquare:
        """Inverse of `affine` for a similarity transform."""
        scale = float(np.hypot(affine[0, 0], affine[0, 1]))
        center = cv2.invertAffineTransform(np.asarray(affine, np.float64)) @ [size / 2.0, size / 2.0, 1.0]
        return cls(float(center[0]), float(center[1]), size / (2.0 * scale),
                   float(np.arctan2(affine[0, 1], affine[0, 0])))


# Mesh points the crop is fitted to: rigid ones only, away from the silhouette (temples) and the
# hairline, so an open mouth or a raised brow does not zoom or shift the crop.
ALIGN_INDICES = np.array([33, 133, 362, 263, 168, 6, 197, 195, 5, 2, 98, 327, 9, 151, 116, 345],
                         dtype=np.int64)


def ffhq_square(left_eye: np.ndarray, right_eye: np.ndarray, mouth: np.ndarray) -> FaceSquare:
    """The FFHQ crop square (ffhq-dataset `recreate_aligned_images`) from the image-left and
    image-right eye centres and the mouth centre."""
    eye_avg = (left_eye + right_eye) / 2.0
    eye_to_eye = right_eye - left_eye
    eye_to_mouth = mouth - eye_avg
    # x axis: the eye line, corrected by the perpendicular of the eye->mouth direction
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x /= np.hypot(*x)
    half_side = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    center = eye_avg + eye_to_mouth * 0.1
    return FaceSquare(float(center[0]), float(center[1]), float(half_side), float(np.arctan2(x[1], x[0])))


def _canonical_template() -> np.ndarray:
    """ALIGN_INDICES of the frontal canonical face in unit crop coordinates ([0,1]^2, y down),
    framed by the FFHQ rule applied to its own eyes and mouth."""
    def image_xy(indices) -> np.ndarray:
        return canonical_points(indices)[:, :2] * [1.0, -1.0]

    left_eye = image_xy(MEDIAPIPE_TO_68[IBUG_RIGHT_EYE]).mean(axis=0)
    right_eye = image_xy(MEDIAPIPE_TO_68[IBUG_LEFT_EYE]).mean(axis=0)
    mouth = image_xy(MEDIAPIPE_TO_68[[48, 54]]).mean(axis=0)
    square = ffhq_square(left_eye, right_eye, mouth)  # axis-aligned: the canonical face is symmetric
    return (image_xy(ALIGN_INDICES) - [square.center_x, square.center_y]) / (2 * square.half_side) + 0.5


ALIGN_TEMPLATE = _canonical_template()


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(D, D+1) least-squares similarity (rotation, uniform scale, translation) taking src to dst
    (Umeyama 1991), for (N, D) point sets: (2, 3) for image points, (3, 4) for 3D meshes."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    u, sigma, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    reflect = np.diag([1.0] * (src.shape[1] - 1) + [np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ reflect @ vt
    scale = np.trace(np.diag(sigma) @ reflect) / (src_c ** 2).sum(axis=1).mean()
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def similarity_from_landmarks(landmarks: np.ndarray, size: int = 512, crop_scale: float = 1.0) -> np.ndarray:
    """(2,3) frame -> crop similarity transform for one frame's (478, 2|3) landmarks: the
    least-squares fit of the rigid ALIGN_INDICES to the canonical FFHQ-framed template, widened
    `crop_scale` times around the crop centre."""
    points = np.asarray(landmarks, np.float64)[ALIGN_INDICES, :2]
    target = ((ALIGN_TEMPLATE - 0.5) / crop_scale + 0.5) * size
    return umeyama_similarity(points, target)


def smooth_squares(squares: list[FaceSquare | None], window: int) -> list[FaceSquare]:
    """Fill frames without a square by linear interpolation, then smooth the parameters."""
    known = np.array([i for i, s in enumerate(squares) if s is not None])
    if len(known) == 0:
        raise ValueError("no frame has landmarks to align to")
    params = np.array([[s.center_x, s.center_y, np.log(s.half_side), s.angle] for s in squares if s is not None])
    params[:, 3] = np.unwrap(params[:, 3])
    frames = np.arange(len(squares))
    dense = np.stack([np.interp(frames, known, params[:, k]) for k in range(4)], axis=1)
    smooth = moving_average(dense, window)
    return [FaceSquare(cx, cy, float(np.exp(log_half)), angle) for cx, cy, log_half, angle in smooth]


def invert_affines(affines: np.ndarray) -> np.ndarray:
    """(T,2,3) inverses of (T,2,3) affine transforms (float64)."""
    return np.stack([cv2.invertAffineTransform(np.asarray(a, np.float64)) for a in affines]) if len(affines) \
        else np.zeros((0, 2, 3))


def points_to_crop(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(T,N,2|3) source-pixel points -> aligned-crop pixels through each frame's (T,2,3) frame->crop
    affine (float64). A z column is scaled like x and y, so depth stays in the same units."""
    affine = np.asarray(affine, np.float64)
    points = np.asarray(points, np.float64)
    xy = np.einsum("tij,tnj->tni", affine[:, :, :2], points[..., :2]) + affine[:, None, :, 2]
    if points.shape[-1] == 2:
        return xy
    scale = np.sqrt(np.abs(np.linalg.det(affine[:, :, :2])))
    return np.concatenate([xy, points[..., 2:3] * scale[:, None, None]], axis=-1)


# -- warping ---------------------------------------------------------------------------------

def warp_to_crop(frame: np.ndarray, affine: np.ndarray, size: int, *,
                 border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    """The size x size aligned crop of `frame`; outside the frame is mirrored (as FFHQ pads)."""
    return cv2.warpAffine(frame, np.asarray(affine, np.float64), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=border)


def feathered_mask(size: int, feather: float = 0.1) -> np.ndarray:
    """(size, size) float32 mask, 1 inside and ramping smoothly to 0 over `feather` * size at the
    borders, so a pasted crop leaves no visible seam."""
    ramp_px = max(1.0, feather * size)
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    ramp = np.clip(distance / ramp_px, 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    return np.outer(ramp, ramp).astype(np.float32)


def paste_back(frame: np.ndarray, crop: np.ndarray, inverse: np.ndarray, mask: np.ndarray | None = None,
               feather: float = 0.1) -> np.ndarray:
    """Blend `crop` (an aligned crop, possibly edited) back into `frame` through `inverse`
    (crop -> frame). `mask` (crop-sized, [0,1] float or uint8 0-255) limits the pasted area;
    by default the whole crop with feathered borders."""
    height, width = frame.shape[:2]
    if mask is None:
        mask = feathered_mask(crop.shape[0], feather)
    elif mask.dtype == np.uint8:
        mask = mask.astype(np.float32) / 255.0
    inverse = np.asarray(inverse, np.float64)
    # Only the footprint in the frame of the crop's part the mask covers is warped and blended (the
    # rest keeps alpha 0): the same sample positions as a whole-frame warp, so the same result up to
    # OpenCV's fixed-point rounding (at most one level on a few pixels), at a fraction of the cost.
    covered = _support(mask)
    out = frame.copy()
    if covered is None:
        return out
    x0, y0, x1, y1 = _footprint(inverse, covered, width, height)
    if x1 <= x0 or y1 <= y0:
        return out
    shifted = inverse.copy()
    shifted[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(crop, shifted, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = cv2.warpAffine(mask.astype(np.float32), shifted, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT)
    region = frame[y0:y1, x0:x1]
    if alpha.ndim == 2 and frame.ndim == 3:
        alpha = alpha[..., None]
    blended = region.astype(np.float32) * (1.0 - alpha) + warped.astype(np.float32) * alpha
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(frame.dtype)
    return out


def nonzero_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The smallest rectangle (x0, y0, x1, y1, exclusive) holding every pixel where `mask` (h, w) or
    (h, w, c) is above 0; None when it is 0 everywhere."""
    hit = mask > 0 if mask.ndim == 2 else (mask > 0).any(axis=2)
    rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _support(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """`nonzero_box` of the mask grown by one pixel (a bilinear sample just outside it still reads it)."""
    box = nonzero_box(mask)
    if box is None:
        return None
    h, w = mask.shape[:2]
    return max(box[0] - 1, 0), max(box[1] - 1, 0), min(box[2] + 1, w), min(box[3] + 1, h)


def _footprint(inverse: np.ndarray, rect: tuple[int, int, int, int], width: int, height: int
               ) -> tuple[int, int, int, int]:
    """The frame pixels the crop rectangle `rect` (x0, y0, x1, y1) covers through `inverse`, one pixel
    of margin for the bilinear edge, clipped to the frame: x0, y0, x1, y1 (exclusive)."""
    cx0, cy0, cx1, cy1 = rect
    corners = np.array([[cx0, cy0, 1], [cx1, cy0, 1], [cx0, cy1, 1], [cx1, cy1, 1]], np.float64) @ inverse.T
    x0, y0 = np.floor(corners.min(axis=0)) - 1
    x1, y1 = np.ceil(corners.max(axis=0)) + 2
    return (int(np.clip(x0, 0, width)), int(np.clip(y0, 0, height)), int(np.clip(x1, 0, width)),
            int(np.clip(y1, 0, height)))


def track_alignment(landmarks: np.ndarray, valid: np.ndarray, size: int, crop_scale: float,
                    smooth_window: int) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed (T,2,3) frame->crop affines and their (T,2,3) inverses for a landmark track."""
    squares = [FaceSquare.from_affine(similarity_from_landmarks(points, size, crop_scale), size) if ok else None
               for points, ok in zip(landmarks, valid)]
    affine = np.stack([s.affine(size) for s in smooth_squares(squares, smooth_window)]).astype(np.float32)
    inverse = invert_affines(affine).astype(np.float32)
    return affine, inverse

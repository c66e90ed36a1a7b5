"""Quality scores of a track, on arrays (the `quality` stage stores them; `filter` thresholds them).

Scores (columns):
- face_size: median face-box side (sqrt of box area) / the source frame's shorter side.
- blur: median over frames of the variance of the Laplacian of the crop's central region
  (higher = sharper).
- pose_extremity: max over frames of max(|yaw|, |pitch|) / pose_norm_deg (1.0 = 90 deg).
- landmark_jitter: mean distance of stable landmarks from their own moving average (the track's
  smooth motion), in crop-normalised units (1.0 = the crop side).
- face_count: passed through.
- speech_ratio: passed through when AudioFeatures ran, else computed with silero-vad.
- av_sync, av_sync_lag: weight-free lip sync (see `av_sync_score`); None without audio.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .smoothing import full_windows, moving_average

# Landmarks that move rigidly with the head (eye corners, nose bridge and tip, forehead, temples):
# eyelids, lips and jaw move on their own and would read as jitter.
STABLE_LANDMARKS = (33, 133, 362, 263, 168, 6, 197, 195, 1, 10, 151, 127, 356)


# -- image fidelity ---------------------------------------------------------------------------------

def image_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of two uint8 images, over `mask` (bool, H x W) when given."""
    diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = diff[mask].mean() if mask is not None else diff.mean()
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def image_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11-tap Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of two uint8
    images, on their luma."""
    def luma(x):
        x = np.asarray(x)
        return (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) if x.ndim == 3 else x).astype(np.float64)

    x, y = luma(a), luma(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    def blur(v):
        return cv2.GaussianBlur(v, (11, 11), 1.5)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(ssim[5:-5, 5:-5].mean())


# -- the sync score -------------------------------------------------------------------------------

def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else math.nan


def finite_pearson(a: np.ndarray, b: np.ndarray, min_frames: int = 10) -> float:
    """Pearson r over the samples where both series are finite; NaN with fewer than `min_frames`
    of them or a constant series."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < min_frames or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return math.nan
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def av_sync_score(mouth_open: np.ndarray, envelope: np.ndarray, max_lag: int = 5,
                  min_frames: int = 10) -> tuple[float, int]:
    """(max Pearson r, its lag) between mouth opening and the audio envelope, both per video frame.

    r(lag) correlates mouth_open[t + lag] with envelope[t]: a positive lag means the mouth moves
    `lag` frames after the sound. Frames where either signal is NaN are skipped; lags with fewer
    than `min_frames` usable frames or a constant signal are ignored. Returns (nan, 0) when no lag
    is usable (e.g. silent audio or a closed mouth throughout).
    """
    mouth = np.asarray(mouth_open, np.float64)
    env = np.asarray(envelope, np.float64)
    n = min(len(mouth), len(env))
    mouth, env = mouth[:n], env[:n]
    best_r, best_lag = -math.inf, 0
    for lag in range(-max_lag, max_lag + 1):
        m = mouth[max(lag, 0): n + min(lag, 0)]
        e = env[max(-lag, 0): n - max(lag, 0)]
        ok = np.isfinite(m) & np.isfinite(e)
        if ok.sum() < min_frames:
            continue
        r = _pearson(m[ok], e[ok])
        if r > best_r:
            best_r, best_lag = r, lag
    return (best_r, best_lag) if best_r > -math.inf else (math.nan, 0)


# -- per-score helpers ----------------------------------------------------------------------------

def face_size_ratio(bbox: np.ndarray, present: np.ndarray, frame_wh: tuple[int, int]) -> float:
    boxes = bbox[present.astype(bool)]
    sides = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    return float(np.median(sides) / min(frame_wh)) if len(sides) else 0.0


def laplacian_sharpness(frames: np.ndarray, centre_fraction: float = 0.6) -> float:
    """Median variance of the Laplacian over the frames' central region (grayscale)."""
    h, w = frames.shape[1:3]
    dy, dx = int(h * (1 - centre_fraction) / 2), int(w * (1 - centre_fraction) / 2)
    values = [cv2.Laplacian(cv2.cvtColor(f[dy:h - dy, dx:w - dx], cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
              for f in frames]
    return float(np.median(values)) if values else 0.0


def pose_extremity(pose: np.ndarray, norm_deg: float = 90.0) -> float:
    yaw_pitch = np.abs(np.asarray(pose, np.float64)[:, :2])
    return float(np.nanmax(yaw_pitch) / norm_deg) if np.isfinite(yaw_pitch).any() else math.nan


def landmark_jitter(landmarks: np.ndarray, affine: np.ndarray, crop_size: int,
                    window: int = 5, indices=STABLE_LANDMARKS) -> float:
    """Mean residual of stable landmarks around their moving average, in crop-side units.

    Residuals are measured in source pixels (so a per-frame alignment that follows the
    landmarks cannot hide them) and scaled by each frame's source->crop scale.
    """
    points = np.asarray(landmarks, np.float64)[:, list(indices), :2]
    if len(points) < window:
        return math.nan
    finite = np.isfinite(points).all(axis=(1, 2))
    smooth = moving_average(np.where(finite[:, None, None], points, 0.0), window)
    full = full_windows(finite, window)
    residual = np.linalg.norm(points - smooth, axis=-1).mean(axis=1)  # (T,) source px
    scale = np.sqrt(np.abs(np.linalg.det(np.asarray(affine, np.float64)[:, :, :2])))
    values = (residual * scale / crop_size)[full]
    return float(values.mean()) if len(values) else math.nan


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)

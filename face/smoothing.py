"""Temporal smoothing of per-frame series: one centred moving average for every caller.

`moving_average` smooths (boxes, alignment parameters, poses); `full_windows` says where the whole
centred window is inside the series and finite, for scores that must not count edge or gap frames
(e.g. landmark jitter, measured only where the average had all its samples); `fill_missing` fills
frames without points by linear interpolation over time.
"""

from __future__ import annotations

import numpy as np


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along axis 0 over `window` samples (an even window acts as the next
    odd one); the window shrinks symmetrically at both ends so the first and last samples are not
    pulled toward padding."""
    values = np.asarray(values, np.float64)
    half = max(0, int(window) // 2)
    if half == 0:
        return values.copy()
    csum = np.concatenate([np.zeros((1,) + values.shape[1:]), np.cumsum(values, axis=0)])
    n = len(values)
    idx = np.arange(n)
    reach = np.minimum(half, np.minimum(idx, n - 1 - idx))  # symmetric reach at each sample
    lo, hi = idx - reach, idx + reach + 1
    counts = (hi - lo).reshape((-1,) + (1,) * (values.ndim - 1))
    return (csum[hi] - csum[lo]) / counts


def fill_missing(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, ...) per-frame points with NaN frames -> (filled by linear interpolation over time, valid (T,))."""
    points = np.asarray(points, np.float32)
    valid = np.all(np.isfinite(points.reshape(len(points), -1)), axis=1)
    if not valid.any():
        raise ValueError("no frame has landmarks")
    if valid.all():
        return points, valid
    flat = points.reshape(len(points), -1)
    known = np.flatnonzero(valid)
    filled = np.stack([np.interp(np.arange(len(points)), known, flat[known, k]) for k in range(flat.shape[1])], 1)
    return filled.reshape(points.shape).astype(np.float32), valid


def full_windows(finite: np.ndarray, window: int) -> np.ndarray:
    """(T,) bool: frames whose whole centred `window` (an even one acts as the next odd one, as in
    `moving_average`) lies inside the series and covers only `finite` frames."""
    finite = np.asarray(finite, bool)
    half = max(0, int(window) // 2)
    bad = np.concatenate([[0], np.cumsum(~finite)])
    idx = np.arange(len(finite))
    inside = (idx >= half) & (idx < len(finite) - half)
    lo, hi = np.clip(idx - half, 0, len(finite)), np.clip(idx + half + 1, 0, len(finite))
    return inside & (bad[hi] - bad[lo] == 0)

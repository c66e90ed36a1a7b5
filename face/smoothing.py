"""Temporal smoothing of per-frame series: one centred moving average for every caller.
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

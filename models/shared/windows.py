"""Temporal windows: cut T frames into overlapping windows and cross-fade their outputs back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# -- temporal windows --------------------------------------------------------------------------------

def window_spans(n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) spans of length `window` covering range(n), consecutive ones sharing at least
    `overlap` frames: the fewest windows that do, spread evenly from 0 to n (so the extra overlap is
    shared out instead of piling up at the end). n <= window gives one span (0, n)."""
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got overlap={overlap}, window={window}")
    if n <= window:
        return [(0, n)] if n > 0 else []
    count = math.ceil((n - overlap) / (window - overlap))
    starts = np.round(np.linspace(0, n - window, count)).astype(int)
    return [(int(s), int(s) + window) for s in starts]


def blend_windows(n: int, spans: Sequence[tuple[int, int]], outputs: Sequence[Any]) -> np.ndarray:
    """Join per-span outputs ((end-start, ...) arrays) into one (n, ...) array.

    Each span's frames are weighted by a triangle over the span (k + 0.5 frames from its nearer end)
    and every frame is normalised by its total weight. Where two spans share m frames their weights
    sum to m, so the result is a linear cross-fade over the shared frames, no jump at window
    boundaries; frames covered by a single span are that span's output.
    """
    if len(spans) != len(outputs):
        raise ValueError(f"{len(spans)} spans but {len(outputs)} outputs")
    if not spans:
        raise ValueError("nothing to blend")
    outputs = [np.asarray(o) for o in outputs]
    acc = np.zeros((n, *outputs[0].shape[1:]), np.float64)
    total = np.zeros(n, np.float64)
    for i, ((start, end), out) in enumerate(zip(spans, outputs)):
        if out.shape[0] != end - start:
            raise ValueError(f"output {i} has {out.shape[0]} frames for span [{start}, {end})")
        k = np.arange(end - start)
        w = np.minimum(k + 0.5, end - start - k - 0.5)
        acc[start:end] += w.reshape(-1, *([1] * (out.ndim - 1))) * out
        total[start:end] += w
    if np.any(total == 0):
        raise ValueError(f"spans do not cover all {n} frames")
    return (acc / total.reshape(-1, *([1] * (acc.ndim - 1)))).astype(np.result_type(outputs[0].dtype, np.float32))

"""Decoded frames of a clip row, shared by the operators that run in one worker.

Several operators of a DAG need the same clip's frames (detection, landmarks, alignment). When Ray
fuses them into one worker, this small per-process cache decodes each clip once. It holds at most
`MAX_ENTRIES` clips so memory stays flat however long the input list is.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from facefab.operators.io import read_frames

MAX_ENTRIES = 2
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()


def clip_frames(row: dict[str, Any], *, size: tuple[int, int] | None = None,
                storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """(T,H,W,3) uint8 RGB frames of `row` (video_uri, start, end at fps), rotation applied."""
    key = (row["video_uri"], row.get("start"), row.get("end"), row.get("fps"), size)
    frames = _cache.get(key)
    if frames is None:
        frames = read_frames(row["video_uri"], fps=row.get("fps"), start=row.get("start"), end=row.get("end"),
                             size=size, storage_options=storage_options)
        _cache[key] = frames
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return frames


def clear() -> None:
    _cache.clear()

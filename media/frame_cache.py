"""Decoded frames shared by the operators that run in one worker.

Several operators of a DAG read the same video: detection, landmarks and alignment read a clip of
the source; parsing, flow and the quality scores read the track's aligned crop, each at its own
size. When they run in one worker (a fused chain, or run_local), this small per-process cache
decodes each video window once at its native size and resizes per request with the same resize
read_frames applies, so results are identical to separate reads. It holds at most `MAX_ENTRIES`
windows, so memory stays flat however long the input list is. Callers must not modify the arrays.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from facefab.manifests.storage import open_fs

from . import read_frames, resize_frames

MAX_ENTRIES = 2
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()


def cached_frames(uri: str, *, fps: float | None = None, start: float | None = None, end: float | None = None,
                  size: tuple[int, int] | None = None, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """read_frames(uri, fps=, start=, end=, size=) through the per-process cache."""
    key = (uri, _identity(uri, storage_options), fps, start, end)
    frames = _cache.get(key)
    if frames is None:
        frames = read_frames(uri, fps=fps, start=start, end=end, storage_options=storage_options)
        _cache[key] = frames
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return resize_frames(frames, size)


def _identity(uri: str, storage_options: dict[str, Any] | None) -> tuple:
    """Size and modification stamp, so a file rewritten at the same URI is decoded afresh."""
    fs, path = open_fs(uri, storage_options)
    info = fs.info(path)
    return info.get("size"), info.get("mtime") or info.get("ETag") or info.get("LastModified")



def clear() -> None:
    _cache.clear()

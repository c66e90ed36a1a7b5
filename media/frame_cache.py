"""Decoded frames shared by the operators that run in one worker.

Several operators of a DAG read the same video: detection, landmarks and alignment read a clip of
the source; parsing, flow and the quality scores read the track's aligned crop, each at its own
size. When they run in one worker (a fused chain, or run_local), this small per-process cache
decodes each video window once at its native size and resizes per request with the same resize
read_frames applies, so results are identical to separate reads. A stage that writes a video the
next stages read (the aligned crops) hands its frames over with `put` instead. It holds at most
`MAX_ENTRIES` windows and `MAX_BYTES` of frames, so memory stays flat however long the input list
is. The arrays are read-only: callers share them.

A window larger than `MAX_BYTES` (a 10 s 4K clip is 6 GB of RGB) is not kept: `clip_source`
returns a `StreamedFrames` that decodes it again, a chunk at a time, on every pass, so a worker's
memory does not grow with the resolution or length of its input. Code that reads frames through
`clip_source` iterates them (`take` for a subset) and works with both forms. Code that needs frames
by index in any order (the dub's ping-pong) uses `indexed_frames`: the array, or `SeekableFrames`,
which decodes short blocks on demand and keeps a few.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from facefab.manifests.storage import open_fs

from . import MediaError, frame_times, iter_frames, read_frames, resize_frames

MAX_ENTRIES = 2
# Decoded frames one worker keeps (FACEFAB_FRAME_CACHE_MB overrides); larger windows stream.
MAX_BYTES = int(float(os.environ.get("FACEFAB_FRAME_CACHE_MB", 1024)) * (1 << 20))
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()


def cached_frames(uri: str, *, fps: float | None = None, start: float | None = None, end: float | None = None,
                  size: tuple[int, int] | None = None, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """read_frames(uri, fps=, start=, end=, size=) through the per-process cache."""
    key = (uri, content_identity(uri, storage_options), fps, start, end)
    frames = _cache.get(key)
    if frames is None:
        frames = read_frames(uri, fps=fps, start=start, end=end, storage_options=storage_options)
        frames.flags.writeable = False  # shared by every later reader in this worker
        _cache[key] = frames
        _evict()
    else:
        _cache.move_to_end(key)
    return resize_frames(frames, size)


def put(uri: str, frames: np.ndarray, storage_options: dict[str, Any] | None = None) -> None:
    """Keep the frames a stage has just written to `uri` (an aligned crop video), so the stages after
    it in this worker read them from memory instead of decoding the file: `cached_frames(uri)` of the
    whole file returns them. They are the frames before encoding, not the decoded ones; within the
    encoder's loss (about 42 dB PSNR at crf 18) of what a later reader of the file gets."""
    if frames.nbytes > MAX_BYTES:
        return
    frames = frames.view()
    frames.flags.writeable = False
    _cache[(uri, content_identity(uri, storage_options), None, None, None)] = frames
    _evict()


def _evict() -> None:
    while len(_cache) > 1 and (len(_cache) > MAX_ENTRIES or _cached_bytes() > MAX_BYTES):
        _cache.popitem(last=False)


def _cached_bytes() -> int:
    return sum(frames.nbytes for frames in _cache.values())


class StreamedFrames:
    """The frames of a window too large to keep decoded: iterating decodes them again, in chunks
    of a few MB (see media.io.DECODE_CHUNK_BYTES), so only one chunk is in memory at a time."""

    def __init__(self, uri: str, *, fps: float | None, start: float | None, end: float | None,
                 storage_options: dict[str, Any] | None = None):
        self.uri, self.fps, self.start, self.end = uri, fps, start, end
        self.storage_options = storage_options

    def __iter__(self) -> Iterator[np.ndarray]:
        for chunk in iter_frames(self.uri, fps=self.fps, start=self.start, end=self.end,
                                 storage_options=self.storage_options):
            yield from chunk


Frames = np.ndarray | StreamedFrames


def fits_in_memory(count: float, width: int, height: int) -> bool:
    """Whether `count` decoded RGB frames of this size stay within MAX_BYTES."""
    return count * width * height * 3 <= MAX_BYTES


class SeekableFrames:
    """The first `count` frames of a local video by index, in any order, without decoding them
    all: frame i decodes its block (a seek and a few MB of frames) unless the block is one of the
    `keep` most recently used, so forward and backward walks decode each block about once."""

    BLOCK_BYTES = 32 << 20

    def __init__(self, path: str, count: int, width: int, height: int, keep: int = 4):
        times = frame_times(path)
        if len(times) < count:
            raise MediaError(f"'{path}' has {len(times)} frames, {count} asked for")
        self.path, self.times, self.count, self.keep = path, times, count, keep
        self.block = max(1, self.BLOCK_BYTES // (width * height * 3))
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.count:
            raise IndexError(f"frame {i} of {self.count}")
        b = int(i) // self.block
        frames = self._blocks.get(b)
        if frames is None:
            first, stop = b * self.block, min((b + 1) * self.block, self.count)
            end = self.times[stop] if stop < len(self.times) else None
            frames = read_frames(self.path, start=float(self.times[first]), end=end)
            if len(frames) < stop - first:
                raise MediaError(f"'{self.path}' decoded {len(frames)} frames from frame {first}, "
                                 f"{stop - first} expected")
            self._blocks[b] = frames
            while len(self._blocks) > self.keep:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(b)
        return frames[int(i) - b * self.block]


def indexed_frames(path: str, count: int, width: int, height: int) -> np.ndarray | SeekableFrames:
    """The first `count` frames of a local video, indexable: one decoded array when it fits
    MAX_BYTES (through the cache, so the rows that dub one video into several languages decode it
    once per worker), else a SeekableFrames."""
    if fits_in_memory(count, width, height):
        times = frame_times(path)
        end = float(times[count]) if count < len(times) else None
        frames = cached_frames(path, end=end)
        if len(frames) < count:
            raise MediaError(f"'{path}' decoded to {len(frames)} frames, {count} asked for")
        return frames[:count]
    return SeekableFrames(path, count, width, height)


def clip_source(uri: str, *, fps: float | None, start: float | None, end: float | None,
                width: int, height: int, storage_options: dict[str, Any] | None = None) -> Frames:
    """The frames of [start, end) at `fps` of a `width` x `height` video: the cached array when the
    window fits `MAX_BYTES`, else a StreamedFrames."""
    seconds = (end - (start or 0.0)) if end is not None else None
    count = seconds * fps if seconds is not None and fps else None
    if count is not None and not fits_in_memory(count, width, height):
        return StreamedFrames(uri, fps=fps, start=start, end=end, storage_options=storage_options)
    return cached_frames(uri, fps=fps, start=start, end=end, storage_options=storage_options)


def take(frames: Iterable[np.ndarray], indices: Iterable[int]) -> Iterator[np.ndarray]:
    """The frames at increasing `indices`, without copying them out of an array or keeping a
    stream; MediaError when the frames end before the last index."""
    if isinstance(frames, np.ndarray):
        for i in indices:
            if i >= len(frames):
                raise MediaError(f"frame {i} asked of a window of {len(frames)} frames")
            yield frames[i]
        return
    wanted = iter(indices)
    i = next(wanted, None)
    count = 0
    for k, frame in enumerate(frames):
        count = k + 1
        if i is None:
            return
        if k == i:
            yield frame
            i = next(wanted, None)
    if i is not None:
        raise MediaError(f"frame {i} asked of a window of {count} frames")


def content_identity(uri: str, storage_options: dict[str, Any] | None) -> tuple:
    """Size and modification stamp, so a file rewritten at the same URI is decoded afresh."""
    fs, path = open_fs(uri, storage_options)
    info = fs.info(path)
    return info.get("size"), info.get("mtime") or info.get("ETag") or info.get("LastModified")



def clear() -> None:
    _cache.clear()

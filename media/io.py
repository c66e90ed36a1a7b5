"""The one place where media is decoded and encoded (video, audio, container metadata).

Conventions used by every function here:

* Times are seconds from the container's start, so video and audio windows of one file line up.
* Frames are (H, W, 3) uint8 RGB with the display rotation already applied; `size` is
  (width, height), as in OpenCV/PIL/ffmpeg.
* `MediaInfo.rotation` is the clockwise rotation (0/90/180/270) a player applies to the coded
  frames, i.e. the meaning of the legacy `rotate` stream tag.
* URIs are local paths, file:// URLs or anything fsspec understands (s3://, memory://, ...).
* Writes are atomic: a hidden temp file (name starts with '.') in the destination folder is
  renamed into place, or a local temp file is uploaded with one `put_file`.

Video decoding uses decord (fast) and falls back to PyAV when decord cannot open or decode a file.
Both backends select frames from the same timestamp list, so they return the same frames.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import tempfile
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from facefab.manifests.storage import atomic_output, open_fs

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
# Timestamps closer than this are equal: breaks ties the same way for both backends.
_EPS = 1e-6
# Video containers write_video knows; anything else is a caller error.
_VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_AUDIO_LAYOUTS = {1: "mono", 2: "stereo"}
_AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def is_image(uri: str) -> bool:
    """A still image, by file name (what `read_image` decodes)."""
    return os.path.splitext(uri.split("?")[0])[1].lower() in IMAGE_SUFFIXES


class MediaError(Exception):
    """Clear, user-facing error about a media input (unreadable, no video stream, ...)."""


class _DecordFailed(Exception):
    """decord could not handle this file; the caller falls back to PyAV."""


@dataclass(frozen=True)
class MediaInfo:
    uri: str
    width: int  # display size, i.e. after rotation is applied
    height: int
    fps: float
    num_frames: int
    duration: float  # of the video stream when there is one, else of the audio / container
    rotation: int  # clockwise degrees, 0/90/180/270
    has_video: bool
    has_audio: bool
    audio_sample_rate: int | None
    audio_channels: int | None
    video_codec: str | None
    audio_codec: str | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Storage


@contextlib.contextmanager
def local_path(uri: str, storage_options: dict | None = None) -> Iterator[str]:
    """Yield a local file path for `uri`.

    Local paths and file:// URLs pass through without a copy; remote files are downloaded to a
    temp file that is deleted afterwards. A missing file raises MediaError naming the URI.
    """
    fs, path = open_fs(uri, storage_options)
    if isinstance(fs, LocalFileSystem):
        if not os.path.isfile(path):
            raise MediaError(f"media file not found: '{uri}'")
        yield path
        return
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".facefab-", suffix=suffix)
    os.close(fd)
    try:
        try:
            fs.get_file(path, tmp)
        except FileNotFoundError as e:
            raise MediaError(f"media file not found: '{uri}'") from e
        yield tmp
    finally:
        _remove_quietly(tmp)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _reason(e: BaseException) -> str:
    # PyAV messages repeat the path and errno; the strerror alone reads better.
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    if isinstance(e, av.error.InvalidDataError):
        text += " (corrupt, truncated or not a media file)"
    return text


@contextlib.contextmanager
def _open_container(uri: str, storage_options: dict | None, kind: str,
                    path: str | None = None) -> Iterator[av.container.InputContainer]:
    """Open `uri` with PyAV (`path`: an already-local copy); errors become MediaError.

    Remote files are read through an fsspec file object, so probing needs only the header.
    """
    with contextlib.ExitStack() as stack:
        source: Any = path
        if source is None:
            fs, fs_path = open_fs(uri, storage_options)
            if isinstance(fs, LocalFileSystem):
                source = fs_path
            else:
                try:
                    source = stack.enter_context(fs.open(fs_path, "rb"))
                except FileNotFoundError as e:
                    raise MediaError(f"media file not found: '{uri}'") from e
        if isinstance(source, str) and not os.path.isfile(source):
            raise MediaError(f"media file not found: '{uri}'")
        try:
            container = stack.enter_context(av.open(source, "r"))
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise MediaError(f"cannot open {kind} '{uri}': {_reason(e)}") from e
        yield container


# --------------------------------------------------------------------------------------------
# Probing


def read_image(uri: str, storage_options: dict | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a still image (JPEG, PNG, WebP: what OpenCV decodes), local
    or remote; a clear MediaError when it is missing or not an image."""
    import cv2

    try:
        with local_path(uri, storage_options) as path:
            data = np.fromfile(path, np.uint8)
    except (OSError, ValueError) as e:
        raise MediaError(f"cannot read image '{uri}': {_reason(e)}") from e
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise MediaError(f"'{uri}' is not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def probe(uri: str, storage_options: dict | None = None) -> MediaInfo:
    """Stream facts of a video or audio file (decodes at most one video frame, for rotation)."""
    with _open_container(uri, storage_options, _kind(uri)) as container:
        return _media_info(uri, container)


def frame_times(uri: str, storage_options: dict | None = None) -> np.ndarray:
    """Presentation time (s) of every frame, in display order, on the clock `start`/`end` select
    on: frames [i, j) of read_frames(uri) are read_frames(uri, start=times[i], end=times[j])."""
    with _open_container(uri, storage_options, "video") as container:
        stream = _video_stream(container)
        if stream is None:
            raise MediaError(f"'{uri}' has no video stream")
        return np.asarray(_frame_times(uri, container, stream, stream.frames), np.float64)


def read_metadata(uri: str, storage_options: dict | None = None) -> dict[str, str]:
    """Container-level metadata tags (e.g. 'comment', 'encoder', custom keys written by us); a PNG's
    text chunks."""
    if uri.lower().endswith(".png"):
        from PIL import Image

        with local_path(uri, storage_options) as path, Image.open(path) as image:
            return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
    with _open_container(uri, storage_options, _kind(uri)) as container:
        return dict(container.metadata)


def _kind(uri: str) -> str:
    """'audio' or 'video', by file name only: the word used in error messages."""
    return "audio" if os.path.splitext(uri)[1].lower() in _AUDIO_SUFFIXES else "video"


def _video_stream(container) -> av.video.stream.VideoStream | None:
    for stream in container.streams.video:
        if av.stream.Disposition.attached_pic not in stream.disposition:  # cover art is no video
            return stream
    return None


def _origin(container) -> float:
    return (container.start_time or 0) / av.time_base


def _stream_duration(stream) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def _stream_end(container, stream) -> float | None:
    """End time of `stream` on the container clock."""
    duration = _stream_duration(stream)
    if duration is None:
        return None
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    return start - _origin(container) + duration


def _media_info(uri: str, container) -> MediaInfo:
    video = _video_stream(container)
    audio = container.streams.audio[0] if container.streams.audio else None
    width = height = num_frames = rotation = 0
    fps = 0.0
    duration = None
    if video is not None:
        rotation = _rotation(uri, container, video)
        width, height = video.codec_context.width, video.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        fps = float(video.average_rate or video.guessed_rate or 0)
        num_frames = video.frames or _count_packets(container, video)
        duration = _stream_duration(video)
        if not fps and duration:
            fps = num_frames / duration
        if duration is None and fps:
            duration = num_frames / fps
    if duration is None and audio is not None:
        duration = _stream_duration(audio)
    if duration is None:
        duration = (container.duration or 0) / av.time_base
    return MediaInfo(
        uri=uri, width=width, height=height, fps=fps, num_frames=num_frames, duration=duration,
        rotation=rotation, has_video=video is not None, has_audio=audio is not None,
        audio_sample_rate=audio.codec_context.sample_rate if audio else None,
        audio_channels=audio.codec_context.channels if audio else None,
        video_codec=video.codec_context.name if video else None,
        audio_codec=audio.codec_context.name if audio else None,
    )


def _rotation(uri: str, container, stream) -> int:
    """Clockwise display rotation: legacy 'rotate' tag, else the first frame's display matrix."""
    tag = stream.metadata.get("rotate")
    if tag is not None:
        degrees = float(tag)
    else:
        # PyAV exposes the stream's display matrix only on decoded frames.
        try:
            frame = next(container.decode(stream), None)
        except av.error.FFmpegError as e:
            raise MediaError(f"cannot open video '{uri}': {_reason(e)}") from e
        if frame is None:
            raise MediaError(f"cannot open video '{uri}': no decodable frame")
        degrees = -frame.rotation  # frame.rotation is counter-clockwise
        container.seek(0)
    return int(round(degrees / 90.0)) * 90 % 360


def _count_packets(container, stream) -> int:
    count = sum(1 for p in container.demux(stream) if p.pts is not None and not p.is_discard)
    container.seek(0)
    return count


def _frame_times(uri: str, container, stream, expected: int) -> list[float]:
    """Presentation times of all frames (sorted packet pts) on the container clock."""
    origin, tb = _origin(container), stream.time_base
    try:
        packets = [(p.pts, p.is_discard) for p in container.demux(stream) if p.pts is not None]
    except av.error.FFmpegError as e:
        raise MediaError(f"cannot open video '{uri}': {_reason(e)}") from e
    finally:
        container.seek(0)
    if expected and len(packets) < expected:
        raise MediaError(f"cannot open video '{uri}': truncated (index lists {expected} frames, "
                         f"data for {len(packets)})")
    # Discarded packets (edit lists) are decoded but never shown: they are not frames.
    return sorted(float(pts * tb) - origin for pts, discard in packets if not discard)


# --------------------------------------------------------------------------------------------
# Frame selection and transforms


def _select(items: Iterable[tuple[float, Any]], *, fps: float | None, start: float | None,
            end: float | None, frame_duration: float) -> Iterator[Any]:
    """Yield the payloads of (time, payload) items (times increasing) that fall in [start, end).

    With `fps`, yield one payload per output tick start + k/fps: the item with the nearest time
    (ties -> the earlier item), so frames repeat when upsampling and are skipped when downsampling.
    Streams lazily and stops reading `items` once `end` is passed.
    """
    start = start or 0.0
    end = math.inf if end is None else end
    if fps is None:
        for t, payload in items:
            if t >= end - _EPS:
                return
            if t >= start - _EPS:
                yield payload
        return
    k, prev = 0, None
    for t, payload in items:
        while True:
            tick = start + k / fps
            if tick >= end - _EPS:
                return
            if tick > t + _EPS:
                break
            take_prev = prev is not None and tick - prev[0] <= t - tick + _EPS
            yield prev[1] if take_prev else payload
            k += 1
        prev = (t, payload)
    if prev is None:
        return
    stream_end = min(end, prev[0] + frame_duration)
    while start + k / fps < stream_end - _EPS:
        yield prev[1]
        k += 1


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate (..., H, W, C) frames clockwise by `rotation` degrees."""
    if rotation % 360 == 0:
        return frames
    axes = (frames.ndim - 3, frames.ndim - 2)
    return np.ascontiguousarray(np.rot90(frames, k=-(rotation // 90) % 4, axes=axes))


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize (T, H, W, 3) frames to size=(width, height)."""
    if size is None or frames.shape[2:0:-1] == size:
        return frames
    import cv2  # noqa: PLC0415 -- heavy import, only when resizing

    width, height = size
    shrinking = width * height < frames.shape[1] * frames.shape[2]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = np.empty((len(frames), height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (width, height), interpolation=interpolation)
    return out


def _batched(items: Iterable[np.ndarray], chunk: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for item in items:
        batch.append(item)
        if len(batch) == chunk:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


# --------------------------------------------------------------------------------------------
# Video decoding

_codec_threads = 0  # 0: each codec library picks (about one thread per core of the machine)


def set_codec_threads(n: int) -> None:
    """Threads the video decoders (decord, PyAV) and the H.264 encoder may each use in this
    process; 0 restores the libraries' defaults. A worker that shares a node with others caps
    this at its CPU share, as it does OpenCV's and torch's pools (engine.limit_threads)."""
    global _codec_threads
    if n < 0:
        raise ValueError(f"codec threads must be >= 0, got {n}")
    _codec_threads = int(n)


# Decoded chunks are kept under glibc's largest mmap threshold (32 MiB), so their buffers are
# recycled from the heap. A 128-frame chunk of 1216x704 video (330 MB) is a fresh mmap each time,
# and faulting its pages in cost more system time than the decoding itself.
DECODE_CHUNK_BYTES = 16 << 20


# decord keeps a pool of about 80 decoded frames per reader: 0.5 GB at 1080p, 2 GB at 4K. Larger
# videos are decoded with PyAV, which holds only the codec's reference frames (0.35 GB at 4K).
# decord also decodes ahead of a consumer that is slower than it, without bound (1.8 GB over a
# 2-minute 480p video read at 5 ms per frame), so "auto" uses it only in `read_frames`, whose
# consumer is a copy; `iter_frames` hands chunks to per-frame work and decodes with PyAV.
DECORD_MAX_PIXELS = 1920 * 1088


def _bounded_chunk(chunk: int, width: int, height: int) -> int:
    return max(1, min(chunk, DECODE_CHUNK_BYTES // max(1, width * height * 3)))


def read_frames(uri: str, *, fps: float | None = None, start: float | None = None,
                end: float | None = None, size: tuple[int, int] | None = None,
                storage_options: dict | None = None, backend: str = "auto") -> np.ndarray:
    """All selected frames as one (T, H, W, 3) uint8 RGB array (see `iter_frames`)."""
    size = _checked_decode_args(fps, start, end, size, backend)
    expected: list[int] = []
    out, filled, extra = None, 0, []
    # Fill one array sized from the container's frame list instead of concatenating chunks:
    # the frames are touched (page-faulted) once, not twice.
    for batch in _iter_frames(uri, fps, start, end, size, 256, storage_options, backend, expected, decord_ok=True):
        if out is None:
            out = np.empty((max(expected[0], len(batch)), *batch.shape[1:]), np.uint8)
        take = min(len(batch), len(out) - filled)
        out[filled:filled + take] = batch[:take]
        filled += take
        if take < len(batch):  # PyAV decoded more frames than the container listed
            extra.append(batch[take:])
    if out is None:
        width, height = size or _display_size(uri, storage_options)
        return np.zeros((0, height, width, 3), np.uint8)
    return np.concatenate([out[:filled], *extra]) if extra else out[:filled]


def _display_size(uri: str, storage_options: dict | None) -> tuple[int, int]:
    info = probe(uri, storage_options)
    return info.width, info.height


def iter_frames(uri: str, *, fps: float | None = None, start: float | None = None,
                end: float | None = None, size: tuple[int, int] | None = None, chunk: int = 64,
                storage_options: dict | None = None, backend: str = "auto") -> Iterator[np.ndarray]:
    """Yield (t, H, W, 3) uint8 RGB chunks (t <= `chunk`) of the frames in [start, end) seconds.

    fps=None keeps every source frame; otherwise frames are resampled to `fps` by picking, for
    each output time start + k/fps, the source frame with the nearest timestamp. size=(width,
    height) resizes after rotation. backend: "auto" (PyAV: its memory stays flat however slowly
    the chunks are consumed; see DECORD_MAX_PIXELS), "decord" or "pyav".
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    # Arguments are checked here, at call time; the decoding runs lazily.
    return _iter_frames(uri, fps, start, end, _checked_decode_args(fps, start, end, size, backend),
                        chunk, storage_options, backend, decord_ok=False)


def _checked_decode_args(fps: float | None, start: float | None, end: float | None,
                         size: tuple[int, int] | None, backend: str) -> tuple[int, int] | None:
    """Validates the decode arguments; returns size as ints (or None)."""
    _check_window(start, end)
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"size must be (width, height) with positive values, got {size}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return None if size is None else (int(size[0]), int(size[1]))


def _iter_frames(uri: str, fps: float | None, start: float | None, end: float | None,
                 size: tuple[int, int] | None, chunk: int, storage_options: dict | None,
                 backend: str, expected: list[int] | None = None, *, decord_ok: bool) -> Iterator[np.ndarray]:
    """expected: when given, receives the number of frames the container lists for the
    selection before the first chunk is yielded. decord_ok: "auto" may pick decord (the
    consumer keeps up with it)."""
    with local_path(uri, storage_options) as path:
        with _open_container(uri, None, "video", path=path) as container:
            stream = _video_stream(container)
            if stream is None:
                raise MediaError(f"'{uri}' has no video stream")
            info = _media_info(uri, container)
            times = _frame_times(uri, container, stream, stream.frames)
        frame_duration = 1.0 / info.fps if info.fps else 0.0
        selection = dict(fps=fps, start=start, end=end, frame_duration=frame_duration)
        indices = list(_select(((t, i) for i, t in enumerate(times)), **selection))
        if expected is not None:
            expected.append(len(indices))
        chunk = _bounded_chunk(chunk, info.width, info.height)
        done = 0
        if backend == "decord" or (backend == "auto" and decord_ok and info.width * info.height <= DECORD_MAX_PIXELS):
            try:
                for batch in _decord_batches(path, info, indices, len(times), chunk):
                    batch = resize_frames(batch, size)
                    done += len(batch)
                    yield batch
                return
            except _DecordFailed as e:
                if backend == "decord":
                    raise MediaError(f"cannot decode video '{uri}' with decord: {e}") from e
                log.warning("decord failed on %s after %d frames (%s); decoding with PyAV", uri, done, e)
        frames = _select(_pyav_frames(uri, path, start), **selection)
        rgb = (_pyav_rgb(f, info.rotation, size) for f in frames)
        for batch in _batched(_skip(rgb, done), chunk):
            yield resize_frames(batch, size)


def _pyav_rgb(frame: av.VideoFrame, rotation: int, size: tuple[int, int] | None) -> np.ndarray:
    """The frame as RGB, rotated for display; with `size`, scaled in the same swscale pass as the
    colour conversion (3x cheaper than converting at full size and resizing, for a thumbnail)."""
    if size is None:
        return _rotate(frame.to_ndarray(format="rgb24"), rotation)
    width, height = size if rotation % 180 == 0 else size[::-1]
    shrinking = width * height < frame.width * frame.height
    return _rotate(frame.to_ndarray(width=width, height=height, format="rgb24",
                                    interpolation="AREA" if shrinking else "BILINEAR"), rotation)


def _check_window(start: float | None, end: float | None) -> None:
    if start is not None and start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if start is not None and end is not None and end < start:
        raise ValueError(f"end ({end}) must not be before start ({start})")


def _skip(items: Iterator[Any], n: int) -> Iterator[Any]:
    for i, item in enumerate(items):
        if i >= n:
            yield item


def _decord_batches(path: str, info: MediaInfo, indices: list[int], expected: int,
                    chunk: int) -> Iterator[np.ndarray]:
    """decord frames for `indices`, `chunk` at a time; any decord problem -> _DecordFailed."""
    try:
        import decord  # noqa: PLC0415 -- optional fast path

        reader = decord.VideoReader(path, num_threads=_codec_threads)
        count = len(reader)
    except Exception as e:  # decord raises RuntimeError / DECORDError / TVMError
        raise _DecordFailed(f"open: {e}".splitlines()[0]) from e
    if count != expected:  # indices refer to the container's frame list
        raise _DecordFailed(f"decord sees {count} frames, the container lists {expected}")
    for i in range(0, len(indices), chunk):
        wanted = indices[i:i + chunk]
        unique = sorted(set(wanted))
        try:
            batch = reader.get_batch(unique).asnumpy()
        except Exception as e:
            raise _DecordFailed(f"decode: {e}".splitlines()[0]) from e
        # decord applies the display rotation itself; anything else means we cannot trust it.
        if batch.shape[1:] != (info.height, info.width, 3):
            raise _DecordFailed(f"decord frame shape {batch.shape[1:]}, expected "
                                f"{(info.height, info.width, 3)}")
        position = {index: j for j, index in enumerate(unique)}
        yield batch if unique == wanted else batch[[position[index] for index in wanted]]


def _pyav_frames(uri: str, path: str, start: float | None) -> Iterator[tuple[float, av.VideoFrame]]:
    """(time, frame) of every decodable frame from about `start` on, in presentation order."""
    with _open_container(uri, None, "video", path=path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        if _codec_threads:
            stream.codec_context.thread_count = _codec_threads
        origin = _origin(container)
        if start:
            # Seek lands on the keyframe at or before start; _select skips the frames before it.
            target = (start + origin) / stream.time_base
            container.seek(int(target), stream=stream)
        try:
            for frame in container.decode(stream):
                if frame.pts is not None:
                    yield float(frame.pts * stream.time_base) - origin, frame
        except av.error.FFmpegError as e:
            raise MediaError(f"cannot decode video '{uri}': {_reason(e)}") from e


# --------------------------------------------------------------------------------------------
# Audio


def read_audio(uri: str, *, sample_rate: int = 16000, mono: bool = True,
               start: float | None = None, end: float | None = None,
               storage_options: dict | None = None) -> np.ndarray:
    """Audio of a wav/mp4/... as float32 in [-1, 1]: shape (N,) if mono else (C, N).

    Resampled to `sample_rate`; sample j is at time start + j/sample_rate (zero padded where the
    audio track begins after `start`). Raises MediaError when there is no audio stream.
    """
    _check_window(start, end)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    with _open_container(uri, storage_options, "audio") as container:
        if not container.streams.audio:
            raise MediaError(f"'{uri}' has no audio stream")
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels
        start = start or 0.0
        stream_end = _stream_end(container, stream)
        if stream_end is not None:
            end = stream_end if end is None else min(end, stream_end)
        wanted = None if end is None else max(0, round((end - start) * sample_rate))
        try:
            first, pieces = _decode_audio(container, stream, sample_rate, mono, start, wanted)
        except av.error.FFmpegError as e:
            raise MediaError(f"cannot decode audio '{uri}': {_reason(e)}") from e
    out_channels = 1 if mono else channels
    audio = (np.concatenate(pieces, axis=1) if pieces
             else np.zeros((out_channels, 0), np.float32))
    offset = round((start - first) * sample_rate) if first is not None else 0
    if offset >= 0:
        audio = audio[:, offset:]
    else:  # the track starts after `start`: pad so sample times stay exact
        audio = np.concatenate([np.zeros((audio.shape[0], -offset), np.float32), audio], axis=1)
    if wanted is not None:
        audio = audio[:, :wanted]
    audio = np.clip(audio, -1.0, 1.0, out=audio) if audio.size else audio
    return audio[0] if mono else audio


def _decode_audio(container, stream, sample_rate: int, mono: bool, start: float,
                  wanted: int | None) -> tuple[float | None, list[np.ndarray]]:
    """Decoded, resampled (C, n) pieces from about `start` on, and the time of the first sample.

    Stops once `wanted` samples past `start` are in hand.
    """
    origin = _origin(container)
    if start > 1.0:
        # Seek a little early: the first frames after a seek can carry decoder warm-up artefacts.
        container.seek(int((start - 0.5 + origin) / stream.time_base), stream=stream)
    layout = "mono" if mono else stream.codec_context.layout.name
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
    first: float | None = None
    pieces: list[np.ndarray] = []
    have = 0
    for frame in itertools.chain(container.decode(stream), [None]):  # None flushes the resampler
        if frame is not None and first is None:
            first = float(frame.pts * stream.time_base) - origin if frame.pts is not None else 0.0
        for out in resampler.resample(frame):
            piece = out.to_ndarray().astype(np.float32, copy=False)
            pieces.append(piece)
            have += piece.shape[1]
        if wanted is not None and first is not None:
            if have >= round((start - first) * sample_rate) + wanted:
                break
    return first, pieces


def write_audio(uri: str, audio: np.ndarray, sample_rate: int,
                storage_options: dict | None = None) -> None:
    """Write float audio ((N,) or (C, N), values in [-1, 1]) as 16-bit PCM WAV, atomically."""
    planar = _planar_audio(audio)
    pcm = (np.clip(planar, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with atomic_output(uri, storage_options) as tmp:
        with wave.open(tmp, "wb") as out:
            out.setnchannels(planar.shape[0])
            out.setsampwidth(2)
            out.setframerate(int(sample_rate))
            out.writeframes(pcm.T.tobytes())  # interleaved samples


def _planar_audio(audio: np.ndarray) -> np.ndarray:
    """(N,) or (C, N) audio as float32 (C, N)."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] > 8 or audio.shape[0] > audio.shape[1] > 0:
        raise ValueError(f"audio must be (N,) or (channels, N), got shape {audio.shape}")
    if np.issubdtype(audio.dtype, np.integer):
        audio = audio / float(np.iinfo(audio.dtype).max)
    return np.ascontiguousarray(audio, dtype=np.float32)


def write_image(uri: str, image: np.ndarray, metadata: dict[str, str] | None = None,
                storage_options: dict | None = None) -> None:
    """Write an (H, W, 3) uint8 RGB image as PNG (lossless, `metadata` as text chunks), atomically."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    if not uri.lower().endswith(".png"):
        raise ValueError(f"cannot write image '{uri}': only .png keeps the provenance tags")
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), str(value))
    with atomic_output(uri, storage_options) as tmp:
        Image.fromarray(_check_frame(image, None)).save(tmp, format="PNG", pnginfo=info)


# --------------------------------------------------------------------------------------------
# Video encoding

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                "veryslow", "placebo")


def write_video(uri: str, frames: np.ndarray | Iterable[np.ndarray], fps: float, *,
                audio: np.ndarray | None = None, audio_rate: int = 16000, crf: int = 18,
                metadata: dict[str, str] | None = None, storage_options: dict | None = None,
                preset: str = "medium") -> None:
    """Encode RGB frames as H.264 (libx264, yuv420p) with optional AAC audio, atomically.

    frames: (T, H, W, 3) uint8 array or an iterable of (H, W, 3) uint8 frames (streamed).
    yuv420p needs even sizes: an odd width/height is padded by repeating the last column/row,
    so a 101x77 input is stored as 102x78. audio: (N,) or (C, N) float in [-1, 1] at
    `audio_rate`, muxed as is (not cut to the video length). metadata: container tags.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if preset not in X264_PRESETS:
        raise ValueError(f"unknown x264 preset {preset!r}; choose from {X264_PRESETS}")
    suffix = os.path.splitext(open_fs(uri, storage_options)[1])[1].lower()
    if suffix not in _VIDEO_FORMATS:
        raise ValueError(f"cannot write video '{uri}': use one of {sorted(_VIDEO_FORMATS)}")
    planar = None if audio is None else _planar_audio(audio)
    if planar is not None and planar.shape[0] not in _AUDIO_LAYOUTS:
        raise ValueError(f"audio must be mono or stereo, got {planar.shape[0]} channels")
    with atomic_output(uri, storage_options) as tmp:
        _encode(tmp, _VIDEO_FORMATS[suffix], iter(frames), fps, planar, audio_rate, crf, preset,
                metadata or {})


def _encode(path: str, fmt: str, frames: Iterator[np.ndarray], fps: float,
            audio: np.ndarray | None, audio_rate: int, crf: int, preset: str,
            metadata: dict[str, str]) -> None:
    first = next(frames, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    shape = _check_frame(first, None).shape[:2]
    first = _even(first)
    height, width = first.shape[:2]
    rate = Fraction(fps).limit_denominator(1001)
    options = {"movflags": "+faststart+use_metadata_tags"} if fmt in ("mp4", "mov") else {}
    with av.open(path, "w", format=fmt, options=options) as container:
        container.metadata.update({str(k): str(v) for k, v in metadata.items()})
        x264 = {"crf": str(crf), "preset": preset}
        if _codec_threads:
            x264["threads"] = str(_codec_threads)
        video = container.add_stream("libx264", rate=rate, options=x264)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=audio_rate,
                                         layout=_AUDIO_LAYOUTS[audio.shape[0]])
        audio_done = 0
        for i, frame in enumerate(_chain(first, frames)):
            if i:
                frame = _even(_check_frame(frame, shape))
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            picture.time_base = 1 / rate
            container.mux(video.encode(picture))
            if sound is not None:  # keep audio interleaved with the video it belongs to
                upto = min(audio.shape[1], math.ceil((i + 1) / rate * audio_rate))
                audio_done = _encode_audio(container, sound, audio, audio_done, upto, audio_rate)
        container.mux(video.encode(None))
        if sound is not None:
            _encode_audio(container, sound, audio, audio_done, audio.shape[1], audio_rate)
            container.mux(sound.encode(None))


def _encode_audio(container, stream, audio: np.ndarray, done: int, upto: int, rate: int) -> int:
    """Encode audio[:, done:upto] in encoder-sized frames; return the new `done`."""
    size = stream.codec_context.frame_size or 1024
    layout = _AUDIO_LAYOUTS[audio.shape[0]]
    # Only whole encoder frames, except for the very last piece of the track.
    while upto - done >= size or (upto == audio.shape[1] and done < upto):
        piece = np.ascontiguousarray(audio[:, done:min(done + size, upto)])
        frame = av.AudioFrame.from_ndarray(np.clip(piece, -1.0, 1.0), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, done, Fraction(1, rate)
        container.mux(stream.encode(frame))
        done += piece.shape[1]
    return done


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _check_frame(frame: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {frame.dtype} {frame.shape}")
    if shape is not None and frame.shape[:2] != shape:
        raise ValueError(f"all frames must have one size: got {frame.shape[:2]}, expected {shape}")
    return frame


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad an odd height/width by repeating the last row/column (yuv420p needs even sizes)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frame)

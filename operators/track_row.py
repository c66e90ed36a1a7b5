"""The face-track row: every accessor of a preprocess row's packed arrays and artifacts, written once.

A track row carries `_track` (frame_index, bbox, present), `_landmarks` (landmarks, valid),
`_align` (affine, inverse) and `_pose` as packed npz blobs, plus artifact URIs (crop_uri,
frames_uri, ...). Operators, the dub and training read them through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from facefab.audio.features import NO_AUDIO_MESSAGE, SAMPLE_RATE, fit_audio, frame_sample_bounds
from facefab.face.alignment import invert_affines, points_to_crop
from facefab.face.mesh import NUM_LANDMARKS
from facefab.manifests.io import read_table
from facefab.media import read_audio
from facefab.media.arrays import unpack_arrays
from facefab.media.frame_cache import Frames, cached_frames, clip_source

from .base import OperatorError

# Decoded crops may differ from the landmark count by one frame (encoder rounding at the end).
FRAME_COUNT_TOLERANCE = 1
NUM_POSE = 6  # yaw, pitch, roll, tx, ty, tz


@dataclass
class FrameTable:
    """A track's per-frame table (`frames_uri`, written by the frame_table stage), as arrays sorted
    by frame; NaN where a stage found nothing for a frame or did not run."""

    frame_index: np.ndarray  # (T,) frame numbers within the clip
    bbox: np.ndarray  # (T, 4) source pixels
    landmarks: np.ndarray  # (T, 478, 3) source pixels
    pose: np.ndarray  # (T, 6) yaw, pitch, roll (degrees), tx, ty, tz
    inverse: np.ndarray  # (T, 2, 3) crop -> frame affine

    def __len__(self) -> int:
        return len(self.frame_index)

    def landmarks_in_crop(self, uri: str = "the frame table") -> np.ndarray:
        """(T,478,3) landmarks in aligned-crop pixels (z scaled like x, y), float32."""
        if not np.isfinite(self.inverse).all():
            raise OperatorError(f"{uri}: some frames have no inverse_transform (run the align stage)")
        return points_to_crop(self.landmarks, invert_affines(self.inverse)).astype(np.float32)


def read_frame_table(frames_uri: str, storage_options: dict[str, Any] | None = None) -> FrameTable:
    """The per-frame table of a preprocessed track; every reader of `frames_uri` goes through here."""
    table = read_table(frames_uri, storage_options)
    rows = sorted(table.to_pylist(), key=lambda r: r["frame_index"])
    if not rows:
        raise OperatorError(f"{frames_uri} has no frames")

    def column(name: str, shape: tuple[int, ...]) -> np.ndarray:
        out = np.full((len(rows), *shape), np.nan, np.float32)
        for i, r in enumerate(rows):
            if r.get(name) is not None:
                out[i] = np.asarray(r[name], np.float32).reshape(shape)
        return out

    return FrameTable(np.asarray([r["frame_index"] for r in rows], np.int64), column("bbox", (4,)),
                      column("landmarks", (NUM_LANDMARKS, 3)), column("pose", (NUM_POSE,)),
                      column("inverse_transform", (2, 3)))

def clip_frames(row: dict[str, Any], *, storage_options: dict[str, Any] | None = None) -> Frames:
    """The uint8 RGB frames of `row` (video_uri, start, end at fps), rotation applied: a (T,H,W,3)
    array, or for a clip too large to keep decoded (media.frame_cache.MAX_BYTES) a stream that
    decodes again on each pass. Iterate it; `media.frame_cache.take` picks a track's frames."""
    if row.get("width") and row.get("height"):
        return clip_source(row["video_uri"], fps=row.get("fps"), start=row.get("start"), end=row.get("end"),
                           width=int(row["width"]), height=int(row["height"]), storage_options=storage_options)
    return cached_frames(row["video_uri"], fps=row.get("fps"), start=row.get("start"), end=row.get("end"),
                         storage_options=storage_options)

# -- crop-space helpers shared by the feature operators --------------------------------------------

def landmarks_in_crop(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """((T,478,2) landmark xy in crop pixels, (T,) valid) from `_landmarks` and `_align`."""
    lm = unpack_arrays(row["_landmarks"])
    affine = unpack_arrays(row["_align"])["affine"].astype(np.float64)
    xy = lm["landmarks"][..., :2].astype(np.float64)
    if len(affine) != len(xy):
        raise OperatorError(f"_align has {len(affine)} frames but _landmarks has {len(xy)}")
    crop = points_to_crop(xy, affine)
    valid = lm["valid"].astype(bool) & np.isfinite(crop).all(axis=(1, 2))
    return crop, valid


def video_frame_count(row: dict[str, Any]) -> int:
    """Frames of the track: the `_track` arrays when present, else the window length at fps."""
    if row.get("_track") is not None:
        return len(unpack_arrays(row["_track"])["frame_index"])
    return round((float(row["end"]) - float(row["start"])) * float(row["fps"]))


def track_time_window(row: dict[str, Any]) -> tuple[float, float]:
    """Source-video seconds the track's frames cover: `_track.frame_index` counts frames from the
    clip's `start`, and a track may begin after it or end before `end`."""
    start = float(row.get("start") or 0.0)
    if row.get("_track") is None:
        return start, float(row["end"])
    fps = float(row["fps"])
    frame_index = unpack_arrays(row["_track"])["frame_index"]
    return start + int(frame_index[0]) / fps, start + (int(frame_index[-1]) + 1) / fps


def fit_length(frames: np.ndarray, n: int, what: str) -> np.ndarray:
    """`frames` cut or edge-padded to `n` items; a gap above the tolerance is an error."""
    if abs(len(frames) - n) > FRAME_COUNT_TOLERANCE or len(frames) == 0:
        raise OperatorError(f"{what} has {len(frames)} frames but the track has {n}")
    if len(frames) >= n:
        return frames[:n]
    return np.concatenate([frames, np.repeat(frames[-1:], n - len(frames), axis=0)])


def read_crop(row: dict[str, Any], size: int | None, n_frames: int,
              storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """(n_frames, size, size, 3) uint8 RGB frames of the row's aligned crop video (decoded once per
    worker for all the operators that read it, see media.frame_cache)."""
    frames = cached_frames(row["crop_uri"], size=(size, size) if size else None, storage_options=storage_options)
    return fit_length(frames, n_frames, f"crop video {row['crop_uri']}")



def clip_audio(row: dict[str, Any], n_frames: int, require_audio: bool,
               storage_options: dict[str, Any] | None = None) -> np.ndarray | None:
    """16 kHz mono audio of the track's frames, exactly n_frames/fps long; None when it has none."""
    if not row.get("has_audio", True):
        if require_audio:
            raise OperatorError(NO_AUDIO_MESSAGE)
        return None
    start, end = track_time_window(row)
    audio = read_audio(row["video_uri"], sample_rate=SAMPLE_RATE, mono=True, start=start, end=end,
                       storage_options=storage_options)
    return fit_audio(audio, int(frame_sample_bounds(n_frames, float(row["fps"]))[-1]))

def clip_audio_or_silence(row: dict[str, Any], n_frames: int, require_audio: bool,
                          storage_options: dict[str, Any] | None = None) -> tuple[np.ndarray, bool]:
    """(audio, has_audio): `clip_audio`, with digital silence of the same length when there is none."""
    audio = clip_audio(row, n_frames, require_audio, storage_options)
    if audio is None:
        return np.zeros(int(frame_sample_bounds(n_frames, float(row["fps"]))[-1]), np.float32), False
    return audio, True

def track_window(row: dict[str, Any], frame_index: np.ndarray) -> tuple[float, float]:
    """Start and end time (s, in the source video) of the track's frames."""
    clip_start, fps = float(row.get("start") or 0.0), float(row["fps"])
    return clip_start + int(frame_index[0]) / fps, clip_start + (int(frame_index[-1]) + 1) / fps

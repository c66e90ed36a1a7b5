"""Head-pose series to follow (`pose_uri` of an animate job): read from a driving video or a table.

- a video (.mp4, .mov, .mkv, .webm, .avi, ...): decoded at the output fps, the largest face of each
  frame meshed and its pose solved (`facefab.face.pose`, the preprocess `pose` stage's method); frames
  without a face are interpolated.
- a table (.parquet, .csv): columns yaw, pitch, roll (degrees), one row per output frame; or a
  preprocess frame table (frames_uri) with its `pose` column.
- .npy: an (N, >=3) array of yaw, pitch, roll per output frame.

The series is returned relative to its first frame (the portrait keeps its own pose and moves as the
driver moves), cut or held at its last value to the number of output frames.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .base import OperatorError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def _from_video(uri: str, fps: float, n: int, detector, mesher, storage_options: dict | None) -> np.ndarray:
    from facefab.face.detection import detect_faces
    from facefab.face.pose import pose_track
    from facefab.media import read_frames

    frames = read_frames(uri, fps=fps, end=(n + 1) / fps, storage_options=storage_options)
    if not len(frames):
        raise OperatorError(f"pose '{uri}': the driving video has no frames")
    detections = detect_faces(frames, detector)
    landmarks = np.zeros((len(frames), 478, 3), np.float64)
    valid = np.zeros(len(frames), bool)
    for t, faces in enumerate(detections):
        if not faces:
            continue
        face = max(faces, key=lambda d: float((d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1])))
        points = mesher(frames[t], face.bbox)
        if points is not None:
            landmarks[t, :, : np.asarray(points).shape[1]] = points
            valid[t] = True
    if not valid.any():
        raise OperatorError(f"pose '{uri}': no face found in the driving video")
    return pose_track(landmarks, valid, frames.shape[2], frames.shape[1])[:, :3]


def _from_table(uri: str, storage_options: dict | None) -> np.ndarray:
    from facefab.manifests.storage import read_bytes

    if uri.lower().endswith(".npy"):
        import io

        array = np.load(io.BytesIO(read_bytes(uri, storage_options)), allow_pickle=False)
        if array.ndim != 2 or array.shape[1] < 3:
            raise OperatorError(f"pose '{uri}': expected an (N, 3) array of yaw, pitch, roll, got {array.shape}")
        return array[:, :3].astype(np.float64)
    import io

    import pandas as pd

    data = read_bytes(uri, storage_options)
    table = pd.read_csv(io.BytesIO(data)) if uri.lower().endswith(".csv") else pd.read_parquet(io.BytesIO(data))
    if {"yaw", "pitch", "roll"} <= set(table.columns):
        return table[["yaw", "pitch", "roll"]].to_numpy(np.float64)
    if "pose" in table.columns:
        return np.stack([np.asarray(p, np.float64)[:3] for p in table["pose"]])
    raise OperatorError(f"pose '{uri}': a pose table needs columns yaw, pitch, roll (or a preprocess frame "
                        f"table's pose column); it has {list(table.columns)}")


def read_pose_series(uri: str, fps: float, n: int, detector=None, mesher=None,
                     storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """(n, 3) yaw, pitch, roll in degrees relative to the series' first frame (see the module docstring)."""
    from facefab.media import MediaError

    suffix = os.path.splitext(uri.split("?")[0])[1].lower()
    try:
        if suffix in VIDEO_SUFFIXES:
            series = _from_video(uri, fps, n, detector, mesher, storage_options)
        else:
            series = _from_table(uri, storage_options)
    except FileNotFoundError:
        raise OperatorError(f"pose '{uri}' not found") from None
    except (MediaError, ValueError, OSError) as e:
        raise OperatorError(f"pose '{uri}': {e}") from e
    series = series[np.isfinite(series).all(axis=1)]
    if not len(series):
        raise OperatorError(f"pose '{uri}': no pose values")
    series = series[:n]
    if len(series) < n:
        series = np.concatenate([series, np.repeat(series[-1:], n - len(series), axis=0)])
    return series - series[0]


__all__ = ["read_pose_series"]

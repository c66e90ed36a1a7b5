"""A dub's speaking face from a preprocess ROOT (`facefab dub --from-preprocess ROOT`) instead of
detecting and meshing the video again.

The ROOT's ok face-track rows of the same source video (`video_uri`) are read through their frame tables
(landmarks and boxes in source pixels, at the clip's frame rate); per shot the speaking track is chosen
as the dub chooses it (largest | central | the track number within the shot) and its landmarks are
resampled to the source video's frame rate (linear between the two nearest clip frames, both found).
Frames no chosen track covers have no face, as in an analysed dub. Rows of other videos are ignored; a
ROOT without a row of this video returns None and the dub analyses the video itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facefab.face.mesh import NUM_LANDMARKS
from facefab.manifests import read_manifest

from .base import OperatorError
from .track_row import FrameTable, read_frame_table


def preprocessed_rows(root: str, video_uri: str, storage_options: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The ok track rows of `video_uri` in the preprocess ROOT, in time order."""
    try:
        table = read_manifest(root, storage_options=storage_options)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise OperatorError(f"--from-preprocess '{root}' is not a readable preprocess root: {e}") from e
    if not table.num_rows:
        raise OperatorError(f"--from-preprocess '{root}' has no preprocess manifest rows")
    rows = [r for r in table.to_pylist()
            if r.get("status") == "ok" and r.get("video_uri") == video_uri and r.get("frames_uri")]
    return sorted(rows, key=lambda r: (float(r["start"]), int(r.get("track_id") or 0)))


def _chosen_per_shot(rows: list[dict[str, Any]], tables: list[FrameTable], how: str,
                     frame_wh: tuple[int, int]) -> list[int]:
    """Indices into `rows` of each shot's speaking track."""
    shots: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        shots.setdefault(row.get("clip_id") or row["start"], []).append(i)
    centre = np.asarray(frame_wh, np.float64) / 2

    def area(i: int) -> float:
        box = tables[i].bbox
        return float(np.nansum(np.prod(box[:, 2:] - box[:, :2], axis=1)))

    def off_centre(i: int) -> float:
        mid = (tables[i].bbox[:, :2] + tables[i].bbox[:, 2:]) / 2
        return float(np.nanmean(np.linalg.norm((mid - centre) / centre, axis=1)))

    chosen = []
    for members in shots.values():
        if how.isdigit():
            chosen += [i for i in members if int(rows[i].get("track_id") or 0) == int(how)]
        elif how == "largest":
            chosen.append(max(members, key=area))
        else:
            longest = max(len(tables[i]) for i in members)
            chosen.append(min((i for i in members if 2 * len(tables[i]) >= longest), key=off_centre))
    return sorted(chosen)


def speaking_face_from_preprocess(root: str, video_uri: str, fps: float, n: int, frame_wh: tuple[int, int],
                                  how: str, storage_options: dict[str, Any] | None = None
                                  ) -> dict[str, np.ndarray] | None:
    """{landmarks (n,478,3), valid (n,), bbox (n,4), seen (n,), track_count} for the source video's first
    `n` frames at `fps`, from ROOT's rows of `video_uri`; None when ROOT has none of this video."""
    rows = preprocessed_rows(root, video_uri, storage_options)
    if not rows:
        return None
    tables = [read_frame_table(r["frames_uri"], storage_options) for r in rows]
    landmarks = np.full((n, NUM_LANDMARKS, 3), np.nan, np.float32)
    bbox = np.full((n, 4), np.nan, np.float32)
    seen = np.zeros(n, bool)
    times = np.arange(n) / fps
    for i in _chosen_per_shot(rows, tables, how, frame_wh):
        row, table = rows[i], tables[i]
        clip_fps, start = float(row["fps"]), float(row["start"])
        first, last = table.frame_index[0], table.frame_index[-1]
        position = (times - start) * clip_fps  # in clip frames
        inside = (position >= first - 0.5) & (position <= last + 0.5)
        seen |= inside
        for k in np.flatnonzero(inside):
            landmarks[k], bbox[k] = _at(table, position[k])
    valid = np.isfinite(landmarks[:, :, :2]).all(axis=(1, 2))
    return {"landmarks": landmarks, "valid": valid, "bbox": bbox, "seen": seen,
            "track_count": np.int32(len(rows))}


def _at(table: FrameTable, position: float) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks, bbox) at a fractional clip frame: linear between the frames either side when both
    have a mesh, else the nearer one's (NaN when it has none)."""
    j = int(np.searchsorted(table.frame_index, position))
    lo, hi = max(0, min(j - 1, len(table) - 1)), min(j, len(table) - 1)
    a, b = table.frame_index[lo], table.frame_index[hi]
    w = 0.0 if b == a else float(np.clip((position - a) / (b - a), 0.0, 1.0))
    ok_lo, ok_hi = (np.isfinite(table.landmarks[k, 0, 0]) for k in (lo, hi))
    if ok_lo and ok_hi:
        return ((1 - w) * table.landmarks[lo] + w * table.landmarks[hi],
                (1 - w) * table.bbox[lo] + w * table.bbox[hi])
    nearer = lo if w < 0.5 else hi
    return table.landmarks[nearer], table.bbox[nearer]


__all__ = ["preprocessed_rows", "speaking_face_from_preprocess"]

"""Sparse point tracks to animate a portrait along (`trajectories_uri` of an animate job).

- a JSON file {"tracks": [[[x, y] or null, ...], ...]}, or a Parquet/CSV table with columns track,
  frame, x, y: positions in the portrait's pixels (frame 0: where each point sits on it);
- a preprocess `flow` artifact (.npz): the flow stage's keypoint trajectories in its aligned crop;
- a preprocess ROOT, `ROOT#SELECTOR`: the flow trajectories of one face track of that run, chosen by
  its row id, its clip id or its source video's file name (stem); a bare ROOT works when the run has
  exactly one track with flow. The clip's frame rate comes with them.

Aligned-crop tracks (the last two) are placed on the portrait through the portrait's own alignment by
the caller, so the motion of that face's parts moves the same parts here.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import OperatorError

USABLE = ("ok", "filtered")  # filtered tracks were scored out of a dataset, their flow is still whole


@dataclass
class Trajectories:
    tracks: np.ndarray  # (K, N, 2) positions, NaN where unseen
    crop_size: int | None = None  # side of the aligned crop they are in; None: the portrait's pixels
    fps: float | None = None  # frame rate of the clip they were tracked on, when known
    source: str | None = None  # the preprocess row they came from


def _split_root(uri: str, storage_options: dict[str, Any] | None) -> tuple[str, str | None] | None:
    """(root, selector) when `uri` names a preprocess root (a folder holding manifest/), else None."""
    from facefab.manifests.io import MANIFEST_DIR
    from facefab.manifests.storage import exists, join_uri

    root, _, selector = uri.partition("#")
    root = root.rstrip("/")
    if not root or not exists(join_uri(root, MANIFEST_DIR), storage_options):
        return None
    return root, selector or None


def _stem(uri: Any) -> str:
    return posixpath.splitext(posixpath.basename(str(uri or "").split("?")[0]))[0]


def _root_row(root: str, selector: str | None, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    from facefab.manifests import read_manifest

    rows = [r for r in read_manifest(root, storage_options).to_pylist()
            if r.get("status") in USABLE and r.get("flow_uri")]
    if not rows:
        raise OperatorError(f"trajectories: preprocess root '{root}' has no face track with flow trajectories "
                            "(run `facefab preprocess` with the flow stage)")
    if selector is None:
        chosen = rows
    else:
        chosen = ([r for r in rows if r.get("id") == selector] or [r for r in rows if r.get("clip_id") == selector]
                  or [r for r in rows if _stem(r.get("video_uri")) == selector])
    if len(chosen) == 1:
        return chosen[0]
    listed = ", ".join(f"{r['id']} ({_stem(r.get('video_uri'))})" for r in (chosen or rows)[:8])
    if not chosen:
        raise OperatorError(f"trajectories: no track '{selector}' in preprocess root '{root}' "
                            f"(a row id, clip id or source video name); it has: {listed}")
    raise OperatorError(f"trajectories: {len(chosen)} tracks in preprocess root '{root}' match "
                        f"{selector or 'a bare root'}; choose one with {root}#ID, ID one of: {listed}")


def _from_table(data: bytes, suffix: str) -> np.ndarray:
    import pandas as pd

    table = pd.read_csv(io.BytesIO(data)) if suffix == "csv" else pd.read_parquet(io.BytesIO(data))
    missing = {"track", "frame", "x", "y"} - set(table.columns)
    if missing:
        raise ValueError(f"a trajectory table needs the columns track, frame, x, y (missing {sorted(missing)})")
    ids = {k: i for i, k in enumerate(sorted(table["track"].unique()))}
    out = np.full((len(ids), int(table["frame"].max()) + 1, 2), np.nan)
    out[table["track"].map(ids).to_numpy(), table["frame"].to_numpy(int)] = table[["x", "y"]].to_numpy(np.float64)
    return out


def _from_json(data: bytes) -> np.ndarray:
    tracks = json.loads(data)["tracks"]
    out = np.full((len(tracks), max(len(track) for track in tracks), 2), np.nan)
    for k, track in enumerate(tracks):
        for t, point in enumerate(track):
            if point is not None:
                out[k, t] = point
    return out


def read_trajectories(uri: str, storage_options: dict[str, Any] | None = None) -> Trajectories:
    """The tracks `uri` names (see the module docstring); OperatorError with the reason when unusable."""
    from facefab.manifests.storage import read_bytes

    fps = source = None
    found = _split_root(uri, storage_options)
    if found is not None:
        row = _root_row(*found, storage_options)
        uri, fps, source = row["flow_uri"], row.get("fps"), row["id"]
    try:
        data = read_bytes(uri, storage_options)
    except (FileNotFoundError, IsADirectoryError):
        raise OperatorError(f"trajectories '{uri}' not found") from None
    suffix = uri.split("?")[0].lower().rsplit(".", 1)[-1]
    try:
        if suffix == "npz":
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return Trajectories(np.asarray(archive["trajectories"], np.float64), int(archive["flow_size"]),
                                    float(fps) if fps else None, source)
        tracks = _from_json(data) if suffix == "json" else _from_table(data, suffix)
        return Trajectories(tracks)
    except (ValueError, KeyError, TypeError, IndexError, OSError) as e:
        raise OperatorError(f"trajectories '{uri}': {e}") from e


__all__ = ["Trajectories", "read_trajectories"]

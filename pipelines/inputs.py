"""Input catalogs: a folder, a glob, a single file, or a Parquet/CSV manifest, local or remote.

Every input becomes a row with a stable `id` derived from its URI (and, for paired inputs, from
all of its URIs), so reruns recognise the same input.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from facefab.manifests.storage import absolute_uri, open_fs
from facefab.operators.base import stable_id

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
TABLE_SUFFIXES = (".parquet", ".csv")


def _full_uri(fs, path: str, like: str) -> str:
    if "://" in like and not like.startswith("file://"):
        return f"{like.split('://', 1)[0]}://{path}"
    return path


def read_catalog_table(uri: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    fs, path = open_fs(uri, storage_options)
    with fs.open(path, "rb") as f:
        table = pacsv.read_csv(f) if path.endswith(".csv") else pq.read_table(f)
    return table.to_pylist()


def list_videos(spec: str, storage_options: dict[str, Any] | None = None,
                suffixes: tuple[str, ...] = VIDEO_SUFFIXES) -> list[str]:
    """Video URIs named by a folder, a glob or a single file."""
    fs, path = open_fs(spec, storage_options)
    if any(ch in path for ch in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = [p for p in fs.find(path) if posixpath.basename(p).lower().endswith(suffixes)]
    elif fs.exists(path):
        found = [path]
    else:
        raise FileNotFoundError(f"input {spec!r} does not exist")
    return sorted(_full_uri(fs, p, spec) for p in found if not posixpath.basename(p).startswith("."))


def video_inputs(specs: list[str], storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows {id, video_uri, ...} from folders/globs/files/manifests; duplicates collapse."""
    rows: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec.lower().endswith(TABLE_SUFFIXES):
            for rec in read_catalog_table(spec, storage_options):
                if not rec.get("video_uri"):
                    raise ValueError(f"{spec}: every row needs a video_uri column value")
                uri = absolute_uri(str(rec["video_uri"]))
                rows.setdefault(uri, {**rec, "video_uri": uri, "id": stable_id("video", uri)})
            continue
        for uri in list_videos(spec, storage_options):
            rows.setdefault(uri, {"id": stable_id("video", uri), "video_uri": uri})
    if not rows:
        raise ValueError(f"no input videos found in {specs}")
    return list(rows.values())


def pair_inputs(kind: str, manifest: str | None, pair: dict[str, str | None],
                storage_options: dict[str, Any] | None = None,
                flag_names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Generation input rows {id, <the two URI columns>, job_id, out_name, ...} from a Parquet/CSV
    manifest (the two columns of `pair`, optional job_id and out_name; other columns are kept), or
    from one pair given as flags (`pair`: column -> value, e.g. {"video_uri": "v.mp4", ...}; a column's
    flag is --<column without _uri> unless `flag_names` names it). The id is stable over (both URIs,
    job_id), so reruns resume; out_names must be distinct and relative."""
    columns = list(pair)
    flags = " and ".join((flag_names or {}).get(c, f"--{c.removesuffix('_uri')}") for c in columns)
    given = [v for v in pair.values() if v]
    if manifest and given:
        raise ValueError(f"give either a MANIFEST or {flags}, not both")
    if manifest:
        records = read_catalog_table(manifest, storage_options)
        missing = set(columns) - set(records[0] if records else {})
        if missing:
            raise ValueError(f"{manifest}: a {kind} manifest needs the columns {' and '.join(columns)} "
                             f"(missing: {sorted(missing)})")
    elif len(given) == len(columns):
        records = [dict(pair)]
    else:
        raise ValueError(f"nothing to {kind}: give a MANIFEST, or both {flags}")
    rows: dict[str, dict[str, Any]] = {}
    for rec in records:
        rec = {**rec, **{c: absolute_uri(rec.get(c)) for c in columns}}
        if rec.get("out_name") is not None:  # a CSV column of numbers reads as integers
            rec["out_name"] = str(rec["out_name"])
        row_id = stable_id(kind, *(rec[c] for c in columns), rec.get("job_id"))
        rows.setdefault(row_id, {**rec, "id": row_id, "job_id": rec.get("job_id") or row_id})
    if not rows:
        raise ValueError(f"{manifest}: the manifest has no rows")
    out = list(rows.values())
    _check_out_names(out)
    return out


def _check_out_names(rows: list[dict[str, Any]]) -> None:
    seen: dict[str, str] = {}
    for row in rows:
        name = row.get("out_name")
        if not name:
            continue
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"out_name {name!r} must be a relative name inside ROOT/outputs")
        key = name.lower().removesuffix(".mp4")
        if key in seen:
            raise ValueError(f"out_name {name!r} is used by more than one input row; outputs would overwrite")
        seen[key] = row["id"]

"""Sharded Parquet manifests over fsspec.

Layout: ROOT/manifest/part-<run_id>-<seq>.parquet. Each run appends its own shards and never
rewrites another run's, so a crash mid-run loses at most the rows not yet flushed; every shard is
committed atomically (storage.atomic_write_bytes). The logical manifest is derived on read: for
each `source_id` only the rows of the newest run that touched it count, and within that, the last
row per `id`. `compact()` folds the shards into one set once a run finishes.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schemas import SCHEMA_VERSION, STATUSLESS_KINDS, schema_for
from .storage import StoreFull, StoreUnreachable, atomic_write_bytes, is_disk_full, endpoint_of, is_local, join_uri, list_visible, open_fs, remove

log = logging.getLogger(__name__)

MANIFEST_DIR = "manifest"


def manifest_uri(root: str) -> str:
    return join_uri(root, MANIFEST_DIR)


def new_run_id() -> str:
    """Sortable run id: UTC timestamp plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + np.random.default_rng().bytes(3).hex()


# -- rows -> Arrow ------------------------------------------------------------------------------

def _json_or_none(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        return json.loads(value) if value else None
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def _column(values: list[Any], field: pa.Field) -> pa.Array:
    t = field.type
    if pa.types.is_map(t):
        values = [None if (v := _json_or_none(x)) is None else list(v.items()) for x in values]
    elif pa.types.is_struct(t):
        values = [_json_or_none(x) for x in values]
    else:
        values = [_plain(x) for x in values]
    return pa.array(values, type=t)


def _infer_column(name: str, values: list[Any]) -> pa.Array:
    values = [_plain(v) for v in values]
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        log.warning("column %r has mixed types; stored as JSON text", name)
        return pa.array([None if v is None else json.dumps(v, default=str) for v in values], type=pa.string())


def rows_to_table(rows: list[dict[str, Any]], kind: str, run_id: str | None = None) -> pa.Table:
    """Arrow table in the kind's schema (declared columns cast, extra columns appended)."""
    schema = schema_for(kind)
    now = datetime.now(timezone.utc)
    if kind not in STATUSLESS_KINDS:
        rows = [{**r, "run_id": r.get("run_id") or run_id, "updated_at": now,
                 "attempts": int(r.get("attempts") or 1)} for r in rows]
    arrays, fields_ = [], []
    for field in schema:
        values = [r.get(field.name) for r in rows]
        try:
            arrays.append(_column(values, field))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise ValueError(f"manifest column {field.name!r} ({field.type}) cannot hold the values given: {exc}") from exc
        fields_.append(field)
    extra = sorted({k for r in rows for k in r} - set(schema.names))
    for name in extra:
        if name.startswith("_"):
            continue  # engine-private columns
        col = _infer_column(name, [r.get(name) for r in rows])
        arrays.append(col)
        fields_.append(pa.field(name, col.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields_, metadata=schema.metadata))


def table_to_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


# -- writing ----------------------------------------------------------------------------------

class ManifestWriter:
    """Buffers rows and commits them as Parquet shards under ROOT/manifest/: every `rows_per_shard`
    rows, and at least every `max_seconds` while rows arrive, so an interrupted run loses at most
    the rows of its last seconds (resume redoes inputs whose rows are incomplete)."""

    def __init__(self, root: str, kind: str, run_id: str, storage_options: dict[str, Any] | None = None,
                 rows_per_shard: int = 500, folder: str = MANIFEST_DIR, max_seconds: float | None = None):
        schema_for(kind)  # validate early
        self.root, self.kind, self.run_id = root, kind, run_id
        self.storage_options = storage_options or {}
        self.rows_per_shard = rows_per_shard
        self.folder = folder
        self.max_seconds = max_seconds
        self._buffer: list[dict[str, Any]] = []
        self._last_commit = time.monotonic()
        self._seq = 0
        self.shards: list[str] = []
        self.rows_written = 0

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self._buffer.extend(rows)
        while len(self._buffer) >= self.rows_per_shard:
            self._flush(self._buffer[: self.rows_per_shard])
            self._buffer = self._buffer[self.rows_per_shard:]
        if self.max_seconds is not None and time.monotonic() - self._last_commit >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._flush(self._buffer)
            self._buffer = []

    def _flush(self, rows: list[dict[str, Any]]) -> None:
        table = rows_to_table(rows, self.kind, self.run_id)
        uri = join_uri(self.root, self.folder, f"part-{self.run_id}-{self._seq:05d}.parquet")
        try:
            atomic_write_bytes(uri, table_to_bytes(table), self.storage_options)
        except Exception as exc:
            if is_local(uri) and is_disk_full(exc):
                raise StoreFull(f"the disk under {self.root} is full: could not commit {len(rows)} rows to {uri} "
                                f"({exc.strerror})") from exc
            if is_local(uri):
                raise
            raise StoreUnreachable(f"object store {endpoint_of(uri, self.storage_options)}: could not commit "
                                   f"{len(rows)} rows to {uri}: {type(exc).__name__}: {exc}") from exc
        self._seq += 1
        self.shards.append(uri)
        self.rows_written += len(rows)
        self._last_commit = time.monotonic()

    def close(self) -> list[str]:
        self.flush()
        return self.shards

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Commit what was processed even when the run is interrupted: those rows are done work.
        # Not when the store is gone: that would only wait out its timeouts again; a rerun redoes them.
        if not (exc_type and issubclass(exc_type, StoreUnreachable)):
            self.flush()


def write_table(uri: str, table: pa.Table, storage_options: dict[str, Any] | None = None) -> None:
    """Commit one Parquet file atomically (artifacts such as per-frame feature tables)."""
    atomic_write_bytes(uri, table_to_bytes(table), storage_options)


# -- reading ----------------------------------------------------------------------------------

def read_table(uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Read one Parquet file, or every committed shard of a folder, as one table."""
    fs, path = open_fs(uri, storage_options)
    if fs.isdir(path):
        shards = list_visible(uri, ".parquet", storage_options)
        return _concat([_read_one(s, storage_options) for s in shards])
    return _read_one(uri, storage_options)


def _read_one(uri: str, storage_options: dict[str, Any] | None) -> pa.Table:
    fs, path = open_fs(uri, storage_options)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    meta = table.schema.metadata or {}
    version = int(meta.get(b"facefab.schema_version", SCHEMA_VERSION))
    if version > SCHEMA_VERSION:
        raise ValueError(f"{uri} was written with manifest schema v{version}; this facefab reads up to v{SCHEMA_VERSION}")
    return table


def _concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def read_manifest(root: str, storage_options: dict[str, Any] | None = None, *, latest: bool = True,
                  folder: str = MANIFEST_DIR) -> pa.Table:
    """The run's manifest. With `latest`, superseded rows from earlier attempts are dropped."""
    # one listing: a missing folder lists as no shards
    shards = list_visible(join_uri(root, folder), ".parquet", storage_options)
    table = _concat([_read_one(s, storage_options) for s in shards])
    if not latest or table.num_rows == 0:
        return table
    return latest_rows(table)


def latest_rows(table: pa.Table) -> pa.Table:
    """Per source_id keep the newest run's rows; per id keep the last written row."""
    source = pc.coalesce(table["source_id"], table["id"])
    keys = pa.table({"source": source, "run": table["run_id"], "id": table["id"],
                     "order": pa.array(np.arange(table.num_rows))})
    newest = keys.group_by("source").aggregate([("run", "max")]).rename_columns(["source", "newest"])
    keys = keys.join(newest, keys="source", join_type="inner")
    keys = keys.filter(pc.equal(keys["run"], keys["newest"]))
    last = keys.group_by("id").aggregate([("order", "max")])
    indices = pc.sort_indices(last["order_max"])
    return table.take(pc.take(last["order_max"], indices))


def compact(root: str, kind: str, storage_options: dict[str, Any] | None = None, folder: str = MANIFEST_DIR) -> int:
    """Rewrite the manifest as the latest rows only, then remove the superseded shards.

    Safe for concurrent readers: the compacted shard is committed before any old shard is
    removed, and duplicate (id, run) rows collapse on read.
    """
    base = join_uri(root, folder)
    old = list_visible(base, ".parquet", storage_options)
    if len(old) <= 1:
        return len(old)
    table = latest_rows(read_table(base, storage_options))
    compacted = join_uri(base, f"part-{new_run_id()}-compact.parquet")
    # keep the rows' own run ids; the file name only has to be unique
    atomic_write_bytes(compacted, table_to_bytes(table.replace_schema_metadata(schema_for(kind).metadata)), storage_options)
    for shard in old:
        remove(shard, storage_options)
    return 1

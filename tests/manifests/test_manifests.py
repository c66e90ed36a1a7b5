"""Manifest IO: round trip, resume bookkeeping and atomic commit, on local disk and real S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from facefab.manifests import (
    STATUS_FAILED,
    STATUS_FILTERED,
    STATUS_OK,
    ManifestWriter,
    plan_resume,
    read_manifest,
    schema_for,
    storage_options_from_env,
)
from facefab.manifests.io import compact, new_run_id, rows_to_table
from facefab.manifests.storage import atomic_write_bytes, list_visible


def _rows(run_id: str, statuses: list[str], source_prefix: str = "v") -> list[dict]:
    rows = []
    for i, status in enumerate(statuses):
        err = None if status == STATUS_OK else json.dumps({"type": "X", "message": f"bad {i}", "operator": "op"})
        rows.append({"id": f"{source_prefix}{i}-c0", "source_id": f"{source_prefix}{i}", "status": status,
                     "error": err, "attempts": 1, "op_versions": json.dumps({"probe": "1"}),
                     "op_seconds": json.dumps({"probe": 0.5}), "video_uri": f"/videos/{i}.mp4",
                     "start": 0.0, "end": 2.0, "extra_score": float(i)})
    return rows


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run"), {}
    return request.getfixturevalue("s3_root")


def test_round_trip_keeps_schema_types_and_extra_columns(root):
    uri, opts = root
    run = new_run_id()
    with ManifestWriter(uri, "clips", run, opts, rows_per_shard=2) as w:
        w.add(_rows(run, [STATUS_OK, STATUS_FAILED, STATUS_OK]))
    assert len(w.shards) == 2
    table = read_manifest(uri, opts)
    assert table.num_rows == 3
    schema = schema_for("clips")
    for name in ("id", "status", "error", "op_versions", "start"):
        assert table.schema.field(name).type == schema.field(name).type
    failed = table.filter(pa.compute.equal(table["status"], STATUS_FAILED)).to_pylist()[0]
    assert failed["error"] == {"type": "X", "message": "bad 1", "operator": "op"}
    assert dict(failed["op_versions"]) == {"probe": "1"}
    assert sorted(table["extra_score"].to_pylist()) == [0.0, 1.0, 2.0]
    assert table.schema.metadata[b"facefab.schema_version"] == b"1"


def test_newer_run_supersedes_rows_of_the_same_source(root):
    uri, opts = root
    first = new_run_id()
    with ManifestWriter(uri, "clips", first, opts) as w:
        w.add(_rows(first, [STATUS_OK, STATUS_FAILED]))
    time.sleep(0.01)
    second = new_run_id()
    retry = [{**_rows(second, [STATUS_OK])[0], "id": "v1-c0", "source_id": "v1", "attempts": 2},
             {**_rows(second, [STATUS_OK])[0], "id": "v1-c1", "source_id": "v1", "attempts": 2}]
    with ManifestWriter(uri, "clips", second, opts) as w:
        w.add(retry)
    table = read_manifest(uri, opts)
    assert sorted(table["id"].to_pylist()) == ["v0-c0", "v1-c0", "v1-c1"]
    assert set(table["status"].to_pylist()) == {STATUS_OK}
    assert read_manifest(uri, opts, latest=False).num_rows == 4
    assert compact(uri, "clips", opts) == 1
    assert len(list_visible(uri + "/manifest", ".parquet", opts)) == 1
    assert sorted(read_manifest(uri, opts, latest=False)["id"].to_pylist()) == ["v0-c0", "v1-c0", "v1-c1"]


def test_plan_resume_skips_done_retries_failed_until_exhausted(tmp_path):
    uri = str(tmp_path)
    run = new_run_id()
    rows = _rows(run, [STATUS_OK, STATUS_FAILED, STATUS_FILTERED])
    rows[1]["attempts"] = 2
    with ManifestWriter(uri, "clips", run) as w:
        w.add(rows)
    inputs = [{"id": f"v{i}"} for i in range(4)]
    plan = plan_resume(inputs, read_manifest(uri), max_attempts=3)
    assert plan.done == ["v0", "v2"]
    assert [(r["id"], r["attempts"]) for r in plan.todo] == [("v1", 3), ("v3", 1)]
    plan = plan_resume(inputs, read_manifest(uri), max_attempts=2)
    assert plan.exhausted == ["v1"]
    plan = plan_resume(inputs, read_manifest(uri), resume=False)
    assert len(plan.todo) == 4


def test_declared_column_with_wrong_type_is_a_clear_error():
    rows = _rows("r", [STATUS_OK])
    rows[0]["start"] = "not a number"
    with pytest.raises(ValueError, match="'start'"):
        rows_to_table(rows, "clips", "r")


def test_unknown_kind_and_future_schema_version_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown manifest kind"):
        schema_for("nope")
    table = rows_to_table(_rows("r", [STATUS_OK]), "clips", "r")
    table = table.replace_schema_metadata({b"facefab.schema_version": b"99"})
    import pyarrow.parquet as pq

    (tmp_path / "manifest").mkdir()
    pq.write_table(table, tmp_path / "manifest" / "part-x.parquet")
    with pytest.raises(ValueError, match="schema v99"):
        read_manifest(str(tmp_path))


def test_storage_options_precedence(monkeypatch):
    monkeypatch.setenv("FACEFAB_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("FACEFAB_STORAGE_OPTIONS", json.dumps({"anon": False}))
    opts = storage_options_from_env('{"secret": "s"}')
    assert opts == {"key": "k", "anon": False, "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    with pytest.raises(ValueError, match="JSON object"):
        storage_options_from_env("[1, 2]")


def test_killed_writer_leaves_no_visible_partial_shard(tmp_path):
    """SIGKILL while a shard is being written: readers see only fully committed shards."""
    root = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, sys, time, json
        from facefab.manifests import ManifestWriter
        from facefab.manifests.io import new_run_id
        rows = [{{"id": f"r{{i}}", "source_id": f"r{{i}}", "status": "ok", "video_uri": "x" * 1000}} for i in range(4000)]
        run = new_run_id()
        with ManifestWriter({str(root)!r}, "clips", run, rows_per_shard=2000) as w:
            w.add(rows[:2000])              # one committed shard
            real_fsync = os.fsync
            def stuck_fsync(fd):             # the next shard's bytes are on disk but not yet committed
                print("WRITING", flush=True)
                time.sleep(60)
            os.fsync = stuck_fsync
            w.add(rows[2000:])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "WRITING"
    temp_files = [p for p in os.listdir(root / "manifest") if p.startswith(".")]
    assert temp_files, "the second shard should be in flight as a temp file"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    table = read_manifest(str(root))
    assert table.num_rows == 2000
    assert len(list_visible(str(root / "manifest"), ".parquet")) == 1


def test_atomic_write_on_s3_is_all_or_nothing(s3_root):
    uri, opts = s3_root
    atomic_write_bytes(uri + "/blob.bin", b"x" * 1024, opts)
    import fsspec

    fs = fsspec.filesystem("s3", **opts)
    assert fs.cat(uri[len("s3://"):] + "/blob.bin") == b"x" * 1024
    assert [p for p in fs.ls(uri[len("s3://"):]) if ".tmp" in p] == []

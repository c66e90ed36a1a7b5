"""Fault injection in the middle of a multi-clip input, then a rerun: SIGTERM to `facefab
preprocess`, and an object store that stops answering or goes down under a run writing to S3.
The interrupted run commits the clips it finished; the rerun must not call the input done on those
alone, and ends with exactly the rows an undisturbed run gives: nothing lost, duplicated or partial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facefab.manifests.io import read_manifest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "talking_d6_4s.mp4"  # 4 s: 4 one-second clips with the flags below
FLAGS = ["--shots.max-clip", "1", "--shots.min-clip", "0.5", "--no-progress", "--commit-seconds", "0"]


def _preprocess(root: Path | str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "facefab.jobs.cli", "preprocess", str(SAMPLE), "--out",
                             str(root), *FLAGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=REPO)


def _preprocess_until_first_commit(root: Path) -> subprocess.Popen:
    """A running preprocess that has committed its first clip's rows: the input is now half done."""
    proc = _preprocess(root)
    deadline = time.monotonic() + 600
    while not _shards(root) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    return proc


def _rows(root: Path | str, storage_options: dict | None = None) -> list[tuple]:
    return sorted((r["clip_id"], r["track_id"], r["status"], r["parts"])
                  for r in read_manifest(str(root), storage_options).to_pylist())


def _shards(root: Path) -> list[Path]:
    return list((root / "manifest").glob("part-*.parquet")) if (root / "manifest").exists() else []


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> list[tuple]:
    """The rows of an undisturbed run."""
    reference = tmp_path_factory.mktemp("undisturbed")
    proc = _preprocess(reference)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    rows = _rows(reference)
    assert len({r[0] for r in rows}) == 4  # four clips of one input
    return rows


@pytest.mark.slow
def test_sigterm_mid_input_then_rerun_gives_the_undisturbed_manifest(tmp_path, expected):
    root = tmp_path / "interrupted"
    proc = _preprocess_until_first_commit(root)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "interrupted" in out and "Traceback" not in out
    partial = _rows(root)
    assert 0 < len(partial) < len(expected), (partial, expected)
    assert set(partial) <= set(expected)  # what was committed is whole rows of finished clips

    proc = _preprocess(root)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "1/1 inputs processed" in out and "(0 already done)" in out  # not reported done
    assert _rows(root) == expected
    summary = json.loads((root / "summary.json").read_text())
    assert summary["outcome"] == "completed" and summary["manifest_counts"]["ok"] == len(expected)


@pytest.mark.slow
def test_driver_killed_mid_input_then_rerun_gives_the_undisturbed_manifest(tmp_path, expected):
    # kill -9: nothing is committed on the way out, the lease stays behind with a dead pid and temp
    # files may be left; the rerun (straight away, no lease wait) must take over and finish the input
    root = tmp_path / "killed"
    proc = _preprocess_until_first_commit(root)
    proc.kill()
    proc.communicate(timeout=60)
    assert (root / "_lease.json").exists()
    assert 0 < len(_rows(root)) < len(expected)

    proc = _preprocess(root)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "(0 already done)" in out
    assert _rows(root) == expected
    assert not list(root.rglob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["pause", "cut"], ids=["store_hangs", "store_down"])
def test_store_outage_mid_run_ends_in_one_line_and_a_rerun_completes(outage, s3_server, expected, monkeypatch):
    import boto3
    from store_proxy import StoreProxy

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FACEFAB_S3_ENDPOINT", raising=False)
    bucket = f"outage-{outage}-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/run"
    direct = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_server}}
    proxy = StoreProxy(int(s3_server.rsplit(":", 1)[1]))
    through_proxy = json.dumps({**direct, "client_kwargs": {"endpoint_url": proxy.endpoint}})
    try:
        proc = _preprocess(root, "--storage-options", through_proxy)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline and not read_manifest(root, direct).num_rows:
            time.sleep(0.5)  # the first clip's rows are committed
        assert proc.poll() is None, "the run finished before the store could fail"
        proxy.pause() if outage == "pause" else proxy.cut()
        start = time.monotonic()
        out, _ = proc.communicate(timeout=300)
        took = time.monotonic() - start
        assert proc.returncode == 1, out
        assert took < 120, f"the run took {took:.0f} s to give up on the store"
        last = out.strip().splitlines()[-1]
        assert proxy.endpoint in last and "Traceback" not in out, out
        partial = _rows(root, direct)
        assert 0 < len(partial) < len(expected) and set(partial) <= set(expected), (partial, expected)

        proxy.restore()
        proc = _preprocess(root, "--storage-options", through_proxy)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        assert _rows(root, direct) == expected
    finally:
        proxy.close()


def _can_mount_tmpfs() -> bool:
    """A private tmpfs needs a user + mount namespace (`unshare -rm`); some containers forbid it."""
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


FULL_DISK_BYTES = 600 << 10  # the first clip's artifacts fit, the run's do not


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a private tmpfs here (unshare -rm refused)")
def test_full_disk_ends_the_run_in_one_line_then_a_rerun_with_space_completes(tmp_path, expected):
    # ROOT is a tmpfs too small for the run, mounted in a private namespace; after the first run the
    # same mount grows (space freed) and the rerun must complete the manifest as an undisturbed run.
    root, logs, final = tmp_path / "root", tmp_path / "logs", tmp_path / "final"
    for folder in (root, logs, final):
        folder.mkdir()
    cli = f"{sys.executable} -m facefab.jobs.cli preprocess {SAMPLE} --out {root} {' '.join(FLAGS)}"
    script = "\n".join([
        f"mount -t tmpfs -o size={FULL_DISK_BYTES} tmpfs {root} || exit 90",
        f"{cli} > {logs}/first.log 2>&1; echo $? > {logs}/first.rc",
        f"mkdir -p {tmp_path}/after_full && cp -a {root}/. {tmp_path}/after_full/",
        f"mount -o remount,size=256m {root}",
        f"{cli} > {logs}/second.log 2>&1; echo $? > {logs}/second.rc",
        f"cp -a {root}/. {final}/",
    ])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, cwd=REPO, timeout=1200)
    assert done.returncode == 0, done
    first = (logs / "first.log").read_text()
    last = first.strip().splitlines()[-1]  # one line says what happened and what to do
    assert "is full" in last and "No space left on device" in last and "free some space" in last, first
    assert "Traceback" not in first and "crashed" not in first, first
    assert int((logs / "first.rc").read_text()) == 1, first
    # a write in flight when the run ended may leave a temp file; the next run removes it
    partial = [r for r in _rows(tmp_path / "after_full") if r[2] == "ok"]
    assert set(partial) <= set(expected) and len(partial) < len(expected)

    second = (logs / "second.log").read_text()
    assert int((logs / "second.rc").read_text()) == 0, second
    assert _rows(final) == expected
    assert not list(final.rglob("*.tmp"))

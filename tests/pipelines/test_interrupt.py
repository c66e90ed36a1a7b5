"""Fault injection: SIGTERM to `facefab preprocess` in the middle of a multi-clip input, then a
rerun. The interrupted run commits the clips it finished; the rerun must not call the input done
on those alone, and ends with exactly the rows an undisturbed run gives: nothing lost, duplicated
or partial."""

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


def _preprocess(root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "facefab.jobs.cli", "preprocess", str(SAMPLE), "--out",
                             str(root), *FLAGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=REPO)


def _rows(root: Path) -> list[tuple]:
    return sorted((r["clip_id"], r["track_id"], r["status"], r["parts"]) for r in read_manifest(str(root)).to_pylist())


def _shards(root: Path) -> list[Path]:
    return list((root / "manifest").glob("part-*.parquet")) if (root / "manifest").exists() else []


@pytest.mark.slow
def test_sigterm_mid_input_then_rerun_gives_the_undisturbed_manifest(tmp_path):
    reference = tmp_path / "undisturbed"
    proc = _preprocess(reference)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    expected = _rows(reference)
    assert len({r[0] for r in expected}) == 4  # four clips of one input

    root = tmp_path / "interrupted"
    proc = _preprocess(root)
    deadline = time.monotonic() + 600
    while not _shards(root) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first clip's rows are committed: the input is now half done
    assert proc.poll() is None, "the run finished before it could be interrupted"
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

"""Operator engine on Ray: error isolation per row, fan-out, resume, summary; local and S3 roots."""

from __future__ import annotations

import json
import shutil

import pytest

from facefab.manifests import read_manifest
from facefab.manifests.io import manifest_uri
from facefab.manifests.storage import list_visible, read_bytes
from facefab.operators.base import Operator, OperatorError, RunContext
from facefab.operators.probe import ProbeVideo
from facefab.operators.shots import ShotClips
from facefab.pipelines.engine import PipelineRun, run_local, run_pipeline
from facefab.pipelines.inputs import video_inputs


@pytest.fixture
def catalog(tmp_path, shared_data):
    """Three real videos and one corrupt file (a real mp4 cut to its first 20 kB)."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("drive_d0.mp4", "drive_d3.mp4", "drive_d6.mp4"):
        shutil.copy(shared_data / "videos" / name, folder / name)
    (folder / "broken.mp4").write_bytes((shared_data / "videos" / "drive_d6.mp4").read_bytes()[:20_000])
    return folder


def _by_video(table):
    out: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault(row["video_uri"].rsplit("/", 1)[-1], []).append(row)
    return out


@pytest.mark.parametrize("where", ["local", "s3"])
def test_toy_dag_isolates_corrupt_input_and_resumes(where, catalog, tmp_path, ray_local, request):
    if where == "local":
        root, opts = str(tmp_path / "out"), {}
    else:
        root, opts = request.getfixturevalue("s3_root")
    inputs = video_inputs([str(catalog)])
    assert len(inputs) == 4
    run = PipelineRun("toy", "clips", RunContext(root, opts), progress=False)
    summary = run_pipeline(run, [ProbeVideo(), ShotClips()], inputs)

    rows = _by_video(read_manifest(root, opts))
    broken = rows.pop("broken.mp4")
    assert len(broken) == 1 and broken[0]["status"] == "failed"
    assert broken[0]["error"]["operator"] == "probe"
    assert "broken.mp4" in broken[0]["error"]["message"]
    assert all(r["status"] == "ok" for rs in rows.values() for r in rs)
    assert len(rows["drive_d0.mp4"]) == 1  # 3.1 s: one clip
    assert len(rows["drive_d3.mp4"]) == 2  # 10.4 s: split under the 10 s maximum
    assert all(r["end"] - r["start"] <= 10.0 + 1e-6 for rs in rows.values() for r in rs)
    assert summary.run_counts == {"ok": 5, "failed": 1, "filtered": 0}
    assert summary.operators["probe"]["errors"] == 1
    stored = json.loads(read_bytes(root.rstrip("/") + "/summary.json", opts))
    assert stored["manifest_counts"]["ok"] == 5 and stored["wall_seconds"] > 0

    shards_before = list_visible(manifest_uri(root), ".parquet", opts)
    again = run_pipeline(run, [ProbeVideo(), ShotClips()], inputs)
    assert again.skipped_done == 3  # ok inputs are not redone
    assert again.processed_inputs == 1  # only the failed one is retried
    table = read_manifest(root, opts)
    retried = [r for r in table.to_pylist() if r["video_uri"].endswith("broken.mp4")]
    assert len(retried) == 1 and retried[0]["attempts"] == 2
    ok_ids = {r["id"] for r in table.to_pylist() if r["status"] == "ok"}
    assert len(ok_ids) == 5  # no duplicated outputs
    assert shards_before  # the first run committed shards


class Explodes(Operator):
    name = "explodes"
    inputs = ("x",)

    def process_row(self, row):
        if row["x"] < 0:
            raise OperatorError("negative input")
        return {"y": row["x"] + 1}


def test_errors_stay_on_their_row_and_downstream_skips_failed_rows():
    rows = run_local([Explodes(), Explodes()], [{"id": "a", "x": 1}, {"id": "b", "x": -1}, {"id": "c"}])
    assert rows[0]["status"] == "ok" and rows[0]["y"] == 2
    assert rows[1]["status"] == "failed"
    assert json.loads(rows[1]["error"]) == {"type": "OperatorError", "message": "negative input", "operator": "explodes"}
    assert rows[2]["status"] == "failed" and "needs column(s) ['x']" in json.loads(rows[2]["error"])["message"]


def test_unknown_config_field_is_rejected():
    with pytest.raises(ValueError, match="unknown config field"):
        ShotClips({"max_clips": 3})


class Fans(Operator):
    name = "fans"
    fan_out = True
    stateful = True
    inputs = ("x",)

    def process_row(self, row):
        return [{"id": f"{row['id']}-{i}", "x": row["x"] - i} for i in range(2)]


def test_chain_keeps_each_members_error_isolation_and_stamps():
    from facefab.operators.base import OperatorChain

    chain = OperatorChain([Fans(), Explodes()])
    assert chain.stateful and chain.fan_out and chain.inputs == ("x",)
    rows = run_local([chain], [{"id": "a", "x": 0}])
    assert [r["status"] for r in rows] == ["ok", "failed"]  # x=0 fine, x=-1 explodes
    assert json.loads(rows[0]["op_versions"]) == {"fans": "1", "explodes": "1"}
    assert json.loads(rows[1]["error"])["operator"] == "explodes"


class Records(Operator):
    name = "records"
    inputs = ("x",)

    def __init__(self, log, tag):
        super().__init__()
        self.log, self.tag = log, tag

    def process_row(self, row):
        self.log.append((self.tag, row["id"]))
        return {}


def test_chain_runs_each_fanned_out_row_to_the_end_before_the_next():
    # depth first, so what a row shares with the stages after (its crop in the frame cache) is
    # still there when they read it
    from facefab.operators.base import OperatorChain

    log = []
    rows = run_local([OperatorChain([Fans(), Records(log, "first"), Records(log, "second")])], [{"id": "a", "x": 5}])
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert log == [("first", "a-0"), ("second", "a-0"), ("first", "a-1"), ("second", "a-1")]


def test_resources_are_fitted_so_actor_pools_cannot_starve_tasks():
    from facefab.operators.base import OperatorChain, Resources
    from facefab.pipelines.engine import fit_resources, pool_bounds

    chain = OperatorChain([Fans(), Explodes()], resources=Resources(num_cpus=1.0, pool_size=0, min_pool_size=0))
    probe = ProbeVideo()
    assert pool_bounds(chain, 2.0) == (2, 2)
    cpus = fit_resources([probe, chain], 2.0)
    assert cpus[chain.name] * 2 <= 1.0 + 1e-9  # actors hold at most half the cluster
    assert cpus["probe"] <= (2.0 - cpus[chain.name] * 2) / 2 + 1e-9
    assert pool_bounds(chain, 64.0) == (64, 64)


class SplitsIntoParts(Operator):
    """Stateless fan-out, like shots: one input row -> `parts` rows, emitted as one block."""

    name = "splits"
    fan_out = True
    inputs = ("parts",)

    def process_row(self, row):
        return [{"id": f"{row['id']}-{i}"} for i in range(row["parts"])]


class RecordsWorker(Operator):
    """Stateful and slow, like the per-track chain; records which actor process ran each row."""

    name = "records_worker"
    stateful = True

    def process_row(self, row):
        import os
        import time

        time.sleep(0.4)
        return {"worker_pid": os.getpid()}


def test_rows_fanned_out_from_one_input_spread_over_the_actor_pool(tmp_path, ray_local):
    # A fan-out task returns all its rows in one block and Ray hands a block to one actor, so
    # without splitting, every clip of a long video would run on the same worker.
    import sys

    from ray import cloudpickle

    from facefab.operators.base import Resources

    module = sys.modules[__name__]  # Ray workers cannot import the test module: ship it by value
    cloudpickle.register_pickle_by_value(module)
    try:
        worker = RecordsWorker(resources=Resources(num_cpus=1.0, pool_size=2, min_pool_size=2))
        run = PipelineRun("spread", "clips", RunContext(str(tmp_path / "out")), progress=False)
        summary = run_pipeline(run, [SplitsIntoParts(), worker], [{"id": "video", "parts": 6}])
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    rows = read_manifest(str(tmp_path / "out")).to_pylist()
    assert summary.run_counts["ok"] == 6 and len(rows) == 6
    assert len({r["worker_pid"] for r in rows}) == 2

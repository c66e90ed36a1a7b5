"""Fault injection: an input that kills its worker process every time (as a segfaulting decoder or
the OOM killer would). Ray restarts the worker and retries without limit; the crash budget must
fail that row after `max_attempts` deaths while the other inputs finish, and the run completes."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from facefab.manifests.io import read_manifest
from facefab.operators.base import Operator, Resources, RunContext
from facefab.pipelines.crash_budget import CRASH_ERROR_TYPE
from facefab.pipelines.engine import PipelineRun, run_pipeline

POISON = "poison"


class KillsItsWorker(Operator):
    """SIGKILLs its own process on the poisoned row; records its pid on the others."""

    name = "kills_its_worker"

    def process_row(self, row):
        if row["id"] == POISON:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"worker_pid": os.getpid()}


class KillsItsActor(KillsItsWorker):
    name = "kills_its_actor"
    stateful = True


@pytest.mark.parametrize("operator", [KillsItsActor, KillsItsWorker], ids=["actor", "task"])
def test_an_input_that_always_kills_its_worker_fails_within_the_budget(operator, tmp_path, ray_local):
    from ray import cloudpickle

    module = sys.modules[__name__]  # Ray workers cannot import the test module: ship it by value
    cloudpickle.register_pickle_by_value(module)
    try:
        op = operator(resources=Resources(num_cpus=0.5, pool_size=1))
        run = PipelineRun("crash", "clips", RunContext(str(tmp_path / "out")), progress=False, max_attempts=2)
        inputs = [{"id": "a"}, {"id": POISON}, {"id": "b"}]
        summary = run_pipeline(run, [op], inputs)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    rows = {r["id"]: r for r in read_manifest(str(tmp_path / "out")).to_pylist()}
    assert sorted(rows) == ["a", "b", POISON]
    assert rows["a"]["status"] == rows["b"]["status"] == "ok"
    error = rows[POISON]["error"]
    error = json.loads(error) if isinstance(error, str) else error
    assert rows[POISON]["status"] == "failed"
    assert error["type"] == CRASH_ERROR_TYPE and error["operator"] == op.name
    assert "worker crashed while processing this input 2 times" in error["message"]
    assert summary.failed_inputs == 1 and summary.outcome == "too_many_failed"

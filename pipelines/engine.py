"""Turn a list of operators into a Ray Data pipeline and run it against a manifest root.

- stateful operators (models, caches) -> `map_batches` on an actor pool (ActorPoolStrategy):
  fixed locally, growing with the load on a cluster (sizes and resources: pools.plan_pools);
- stateless fan-out operators (one video -> many clips) -> `flat_map` tasks;
- other stateless operators -> `map_batches` tasks.

`run_pipeline` adds the run around it: resume plan from the existing manifest, streaming the
results into manifest shards as they arrive (so an interrupted run keeps its finished rows),
compaction, and ROOT/summary.json.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pyarrow as pa

from facefab.manifests.io import ManifestWriter, compact, new_run_id, read_manifest
from facefab.manifests.lease import RootLease
from facefab.manifests.resume import plan_resume
from facefab.manifests.schemas import STATUS_FAILED, STATUS_FILTERED, STATUS_OK
from facefab.manifests.storage import atomic_write_bytes, check_reachable, join_uri, remove_stale_temps
from facefab.operators.base import Operator, RunContext
from facefab.operators.runtime import init_ray, limit_threads, quiet_console, ray_logs_dir

from . import pools
from .crash_budget import CrashBudget
from .pools import Placement, StagePlan, describe, placement_now, plan_pools
from .progress import RunProgress
from .store_watch import StoreWatch

log = logging.getLogger(__name__)

# where they lived before pools.py (tests and older code import them from here)
fit_resources, pool_bounds = pools.fit_resources, pools.pool_bounds


# -- Ray plumbing -------------------------------------------------------------------------------

def rows_to_arrow(rows: list[dict[str, Any]]) -> pa.Table:
    """pa.Table.from_pylist infers columns from the first row only; use the union of keys."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return pa.table({k: pa.array([r.get(k) for r in rows]) for k in keys}) if rows else pa.table({})


def _apply_all(op: Operator, rows: Iterable[dict[str, Any]], budget: CrashBudget | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for row in rows:
        tracked = budget is not None and row.get("status", STATUS_OK) == STATUS_OK  # others pass through
        exhausted = budget.begin(op.name, row) if tracked else None
        if exhausted is not None:
            out.append(exhausted)
            continue
        out.extend(op.apply(row))
        if tracked:
            budget.end(op.name, row)
    return out


class _OperatorActor:
    """Actor-pool host for a stateful operator: setup() once, then batches."""

    def __init__(self, op: Operator, threads: int = 1, budget: CrashBudget | None = None):
        limit_threads(threads)
        self.op, self.budget = op, budget
        try:
            self.op.ensure_setup()
        except Exception:  # noqa: BLE001 - re-raised per row by Operator.apply, with the row attached
            log.exception("%s.setup() failed; every row of this actor will be marked failed", op.name)
            self.op._is_setup = False

    def __call__(self, batch: pa.Table) -> pa.Table:
        return rows_to_arrow(_apply_all(self.op, batch.to_pylist(), self.budget))


def _task_batch(batch: pa.Table, op: Operator, threads: int = 1, budget: CrashBudget | None = None) -> pa.Table:
    limit_threads(threads, torch_too=False)
    return rows_to_arrow(_apply_all(op, batch.to_pylist(), budget))


def _task_flat(row: dict[str, Any], op: Operator, threads: int = 1,
               budget: CrashBudget | None = None) -> list[dict[str, Any]]:
    limit_threads(threads, torch_too=False)
    return _apply_all(op, [row], budget)


def build_dataset(ds, operators: Sequence[Operator], ctx: RunContext, where: Placement | None = None,
                  budget: CrashBudget | None = None, rows: int | None = None,
                  plans: Sequence[StagePlan] | None = None):
    """Chain the operators onto a Ray Dataset as `plans` says (default: as `plan_pools` plans them
    for `where`, itself by default the connected Ray, see pools.placement_now); returns the new
    Dataset (lazy). With a `budget`, an input whose worker keeps dying is failed after the
    budget's limit instead of retried."""
    from ray.data import ActorPoolStrategy

    ops = [op.with_context(ctx) for op in operators]
    if plans is None:
        plans = plan_pools(ops, where or placement_now(ctx.use_gpu), rows)
    for op, plan in zip(ops, plans, strict=True):
        kwargs = {"op": op, "threads": plan.threads, "budget": budget}
        if op.stateful:
            ds = ds.map_batches(
                _OperatorActor,
                fn_constructor_args=(op, plan.threads, budget),
                batch_size=op.resources.batch_size,
                batch_format="pyarrow",
                compute=ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors,
                                          max_tasks_in_flight_per_actor=plan.tasks_per_actor),
                num_cpus=plan.num_cpus,
                num_gpus=plan.num_gpus,
            )
        elif op.fan_out:
            ds = ds.flat_map(_task_flat, fn_kwargs=kwargs, num_cpus=plan.num_cpus, num_gpus=plan.num_gpus)
            # a fan-out task emits all its rows (one video's clips) as one block, and a block goes
            # to one actor; split it so the clips of a long video spread over the pool
            ds = ds.repartition(target_num_rows_per_block=1)
        else:
            ds = ds.map_batches(_task_batch, fn_kwargs=kwargs, batch_size=op.resources.batch_size,
                                batch_format="pyarrow", num_cpus=plan.num_cpus, num_gpus=plan.num_gpus)
    return ds


def run_local(operators: Sequence[Operator], rows: Iterable[dict[str, Any]], ctx: RunContext | None = None) -> list[dict[str, Any]]:
    """The same operators in this process, one row after another (tests, debugging, baselines)."""
    ops = [op.with_context(ctx) if ctx else op for op in operators]
    current = [dict(r, status=r.get("status", STATUS_OK)) for r in rows]
    for op in ops:
        current = _apply_all(op, current)
    return current


# -- a run ----------------------------------------------------------------------------------------
# The exit-code contract of every job command (README "Exit codes"; `facefab --help`).
EXIT_OK = 0  # the run completed and every input is accounted for (failed rows are recorded)
EXIT_CRASH = 1  # the run itself crashed
EXIT_USAGE = 2  # usage or configuration error
EXIT_TOO_MANY_FAILED = 3  # completed, but more inputs failed than --max-failed-fraction allows
DEFAULT_MAX_FAILED_FRACTION = 0.1
OUTCOME_COMPLETED = "completed"
OUTCOME_TOO_MANY_FAILED = "too_many_failed"


@dataclass
class RunSummary:
    pipeline: str
    run_id: str
    out_root: str
    wall_seconds: float
    inputs: int
    processed_inputs: int
    skipped_done: int
    skipped_exhausted: int
    rows_written: int
    run_counts: dict[str, int]  # status -> rows written by this run
    manifest_counts: dict[str, int]  # status -> rows in the whole (latest) manifest
    operators: dict[str, dict[str, float]]  # name -> rows, seconds, rows_per_s, errors
    errors: list[dict[str, str]] = field(default_factory=list)  # first few, for humans
    config: dict[str, Any] = field(default_factory=dict)
    failed_inputs: int = 0  # inputs of this run with a failed row
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION
    # "completed": every input is accounted for in the manifest (failed rows are recorded, not
    # fatal); "too_many_failed": completed, but failed_inputs / processed_inputs > max_failed_fraction
    outcome: str = "completed"
    logs: str | None = None  # Ray's log folder of this run: worker output, native library messages

    @property
    def failed_fraction(self) -> float:
        return self.failed_inputs / self.processed_inputs if self.processed_inputs else 0.0

    @property
    def exit_code(self) -> int:
        """The job commands' exit code for this run (see `facefab --help`)."""
        return EXIT_TOO_MANY_FAILED if self.outcome == OUTCOME_TOO_MANY_FAILED else EXIT_OK

    def to_json(self) -> str:
        out = {**asdict(self), "failed_fraction": round(self.failed_fraction, 4), "exit_code": self.exit_code}
        return json.dumps(out, indent=2, sort_keys=True, default=str)

    def line(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.manifest_counts.items()))
        line = (f"{self.pipeline}: {self.processed_inputs}/{self.inputs} inputs processed in "
                f"{self.wall_seconds:.1f}s ({self.skipped_done} already done); manifest: {counts}")
        if self.outcome == OUTCOME_TOO_MANY_FAILED:
            line += (f"; {self.failed_inputs} of {self.processed_inputs} inputs failed "
                     f"({self.failed_fraction:.0%} > --max-failed-fraction {self.max_failed_fraction:g})")
        return line



@dataclass
class PipelineRun:
    """Everything a run needs besides its operators."""

    name: str
    kind: str  # manifest kind of the primary output
    ctx: RunContext
    resume: bool = True
    max_attempts: int = 3
    limit: int | None = None
    progress: bool = True
    rows_per_shard: int = 200
    commit_seconds: float = 10.0
    lease_wait: float = 0.0  # seconds to wait for another run on the same ROOT before giving up  # commit finished rows at least this often (interruptions lose less)
    config: dict[str, Any] = field(default_factory=dict)
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION
    # reorders the inputs to process (after resume planning), e.g. largest first to shorten the tail
    order: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None
    # GPUs for the stages that use them (--gpus); None: locally when the machine has GPUs, on a cluster not
    gpus: bool | None = None


def _operator_stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    for row in rows:
        for name, seconds in json.loads(row.get("op_seconds") or "{}").items():
            s = stats.setdefault(name, {"rows": 0, "seconds": 0.0, "errors": 0})
            s["rows"] += 1
            s["seconds"] += float(seconds)
        err = row.get("error")
        if err and row.get("status") == STATUS_FAILED:
            op_name = json.loads(err).get("operator", "?")
            stats.setdefault(op_name, {"rows": 0, "seconds": 0.0, "errors": 0})["errors"] += 1
    for s in stats.values():
        s["rows_per_s"] = round(s["rows"] / s["seconds"], 3) if s["seconds"] > 0 else None
        s["seconds"] = round(s["seconds"], 3)
    return stats


def _failed_stage(row: dict[str, Any]) -> str:
    return json.loads(row["error"]).get("operator", "?") if row.get("error") else "?"


def _counts(statuses: Iterable[str]) -> dict[str, int]:
    out = {STATUS_OK: 0, STATUS_FAILED: 0, STATUS_FILTERED: 0}
    for s in statuses:
        out[s] = out.get(s, 0) + 1
    return out


def _sweep_temps(name: str, root: str) -> None:
    removed = remove_stale_temps(root)
    if removed:
        log.info("%s: removed %d temp file(s) left by an interrupted run", name, removed)


def run_pipeline(run: PipelineRun, operators: Sequence[Operator], inputs: list[dict[str, Any]]) -> RunSummary:
    """Run `operators` over `inputs` (rows with a stable `id`) and commit the manifest."""
    import ray

    start = time.perf_counter()
    ctx = run.ctx
    if not ctx.run_id:
        ctx = replace(ctx, run_id=new_run_id())
    check_reachable(ctx.out_root, ctx.storage_options)
    with RootLease(ctx.out_root, ctx.run_id, ctx.storage_options, wait_seconds=run.lease_wait, what=run.name):
        _sweep_temps(run.name, ctx.out_root)
        inputs = inputs[: run.limit] if run.limit else inputs
        existing = read_manifest(ctx.out_root, ctx.storage_options)
        plan = plan_resume(inputs, existing, resume=run.resume, max_attempts=run.max_attempts)
        log.info("%s: %s", run.name, plan.describe())

        written: list[dict[str, Any]] = []
        with ManifestWriter(ctx.out_root, run.kind, ctx.run_id, ctx.storage_options,
                            rows_per_shard=run.rows_per_shard, max_seconds=run.commit_seconds) as writer:
            if plan.todo:
                init_ray(progress=run.progress)
                where = placement_now(run.gpus if run.gpus is not None else ctx.use_gpu or None)
                ctx = replace(ctx, use_gpu=where.use_gpu)
                todo = run.order(plan.todo) if run.order else plan.todo
                todo = [{**r, "source_id": r["id"], "status": STATUS_OK, "run_id": ctx.run_id} for r in todo]
                ds = ray.data.from_items(todo, override_num_blocks=len(todo))
                budget = CrashBudget(run.max_attempts, f"facefab-crash-budget-{ctx.run_id}")
                plans = plan_pools(operators, where, len(todo))
                log.info("%s: %s", run.name, "; ".join([describe(where), *(plan.line() for plan in plans)]))
                ds = build_dataset(ds, operators, ctx, budget=budget, plans=plans)
                with quiet_console() as console, StoreWatch(ctx.out_root, ctx.storage_options) as watch:
                    progress = RunProgress(run.name, len(todo), enabled=run.progress, stream=console)
                    try:
                        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                            rows = batch.to_pylist()
                            writer.add(rows)
                            rows = [{k: r.get(k) for k in ("id", "source_id", "status", "error", "op_seconds")}
                                    for r in rows]
                            written.extend(rows)
                            progress.add(rows, _failed_stage)
                    except KeyboardInterrupt:
                        if watch.error is not None:  # the store stopped answering (see StoreWatch)
                            raise watch.error from None
                        raise
                    finally:
                        progress.close()
                        budget.close()
        compact(ctx.out_root, run.kind, ctx.storage_options)
        # again at the end: a worker of a run killed just before this one may have gone on writing
        _sweep_temps(run.name, ctx.out_root)
        manifest = read_manifest(ctx.out_root, ctx.storage_options)
        errors = [{"id": r["id"], "status": r["status"], **json.loads(r["error"])} for r in written if r.get("error")][:50]
        failed_inputs = len({r["source_id"] for r in written if r["status"] == STATUS_FAILED})
        too_many = bool(plan.todo) and failed_inputs / len(plan.todo) > run.max_failed_fraction
        summary = RunSummary(
            pipeline=run.name, run_id=ctx.run_id, out_root=ctx.out_root,
            wall_seconds=round(time.perf_counter() - start, 3), inputs=len(inputs),
            processed_inputs=len(plan.todo), skipped_done=len(plan.done), skipped_exhausted=len(plan.exhausted),
            rows_written=len(written), run_counts=_counts(r["status"] for r in written),
            manifest_counts=_counts(manifest["status"].to_pylist()) if manifest.num_rows else _counts([]),
            operators=_operator_stats(written), errors=errors, config=run.config, failed_inputs=failed_inputs,
            max_failed_fraction=run.max_failed_fraction, outcome=OUTCOME_TOO_MANY_FAILED if too_many else OUTCOME_COMPLETED,
            logs=ray_logs_dir(),
        )
        atomic_write_bytes(join_uri(ctx.out_root, "summary.json"), summary.to_json().encode(), ctx.storage_options)
        return summary

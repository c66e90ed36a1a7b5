"""Resume: decide which inputs a rerun must process, from the manifest already on storage.

An input (identified by the `id` it gets as a source row) is done when its rows are complete and
every one is `ok` or `filtered` (filtered is a verdict, not an error). Complete: the rows' fan-out
lineages (`parts`) cover the whole tree, so an input whose run was interrupted after some of its
clips were committed is processed again, not reported done. It is retried when one of its rows
`failed` and it has been attempted fewer than `max_attempts` times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .schemas import STATUS_FAILED


@dataclass
class ResumePlan:
    todo: list[dict[str, Any]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # source ids skipped because they are finished
    exhausted: list[str] = field(default_factory=list)  # failed max_attempts times; left failed
    incomplete: list[str] = field(default_factory=list)  # in `todo`: an earlier run stopped mid-input

    def describe(self) -> str:
        return (f"{len(self.todo)} to process ({len(self.incomplete)} left incomplete by an earlier run), "
                f"{len(self.done)} already done, "
                f"{len(self.exhausted)} failed {'' if not self.exhausted else 'too often, '}skipped")


def parts_complete(parts: list[str | None]) -> bool:
    """Whether rows with these fan-out lineages are the whole output of one input: every fan-out
    step that produced n rows has all n of them (or their own complete subtrees)."""
    paths = [tuple(tuple(int(x) for x in step.split("/")) for step in p.split(".")) if p else () for p in parts]
    if not paths:
        return False
    if () in paths:
        return len(paths) == 1  # the input itself is the only row (no fan-out, or it failed before)

    def complete(prefix_len: int, group: list[tuple]) -> bool:
        counts = {path[prefix_len][1] for path in group}
        if len(counts) != 1:
            return False
        children: dict[int, list[tuple]] = {}
        for path in group:
            children.setdefault(path[prefix_len][0], []).append(path)
        if set(children) != set(range(counts.pop())):
            return False
        for members in children.values():
            leaves = [m for m in members if len(m) == prefix_len + 1]
            if leaves:
                if len(members) != 1:
                    return False
            elif not complete(prefix_len + 1, members):
                return False
        return True

    return complete(0, paths)


def _source_states(manifest: pa.Table) -> dict[str, tuple[bool, int, bool]]:
    """source_id -> (has a failed row, attempts so far, rows complete)."""
    if manifest.num_rows == 0:
        return {}
    source = pc.coalesce(manifest["source_id"], manifest["id"])
    failed = pc.equal(manifest["status"], STATUS_FAILED)
    attempts = pc.fill_null(manifest["attempts"], 1) if "attempts" in manifest.column_names else pa.array([1] * manifest.num_rows)
    parts = manifest["parts"] if "parts" in manifest.column_names else pa.nulls(manifest.num_rows, pa.string())
    grouped = pa.table({"source": source, "failed": failed, "attempts": attempts, "parts": parts}).group_by(
        "source").aggregate([("failed", "any"), ("attempts", "max"), ("parts", "list")])
    return {s: (f, a, parts_complete(p)) for s, f, a, p in zip(
        grouped["source"].to_pylist(), grouped["failed_any"].to_pylist(), grouped["attempts_max"].to_pylist(),
        grouped["parts_list"].to_pylist())}


def plan_resume(inputs: list[dict[str, Any]], manifest: pa.Table, *, resume: bool = True,
                max_attempts: int = 3) -> ResumePlan:
    """Split `inputs` (rows with an `id`) into work to do and work already finished."""
    plan = ResumePlan()
    states = _source_states(manifest) if resume else {}
    for row in inputs:
        state = states.get(row["id"])
        if state is None:
            plan.todo.append({**row, "attempts": 1})
            continue
        has_failed, attempts, complete = state
        if not complete:  # interrupted mid-input: do it again (the new run's rows supersede these)
            plan.todo.append({**row, "attempts": attempts + 1})
            plan.incomplete.append(row["id"])
        elif not has_failed:
            plan.done.append(row["id"])
        elif attempts >= max_attempts:
            plan.exhausted.append(row["id"])
        else:
            plan.todo.append({**row, "attempts": attempts + 1})
    return plan

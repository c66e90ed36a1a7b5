"""Resume: decide which inputs a rerun must process, from the manifest already on storage.

An input (identified by the `id` it gets as a source row) is done when every manifest row derived
from it is `ok` or `filtered` (filtered is a verdict, not an error). It is retried when one of its
rows `failed` and it has been attempted fewer than `max_attempts` times.
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

    def describe(self) -> str:
        return (f"{len(self.todo)} to process, {len(self.done)} already done, "
                f"{len(self.exhausted)} failed {'' if not self.exhausted else 'too often, '}skipped")


def _source_states(manifest: pa.Table) -> dict[str, tuple[bool, int]]:
    """source_id -> (has a failed row, attempts so far)."""
    if manifest.num_rows == 0:
        return {}
    source = pc.coalesce(manifest["source_id"], manifest["id"])
    failed = pc.equal(manifest["status"], STATUS_FAILED)
    attempts = pc.fill_null(manifest["attempts"], 1) if "attempts" in manifest.column_names else pa.array([1] * manifest.num_rows)
    grouped = pa.table({"source": source, "failed": failed, "attempts": attempts}).group_by("source").aggregate(
        [("failed", "any"), ("attempts", "max")])
    return {s: (f, a) for s, f, a in zip(grouped["source"].to_pylist(), grouped["failed_any"].to_pylist(),
                                          grouped["attempts_max"].to_pylist())}


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
        has_failed, attempts = state
        if not has_failed:
            plan.done.append(row["id"])
        elif attempts >= max_attempts:
            plan.exhausted.append(row["id"])
        else:
            plan.todo.append({**row, "attempts": attempts + 1})
    return plan

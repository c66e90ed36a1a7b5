"""A per-input budget of worker deaths.

Ray Data restarts a dead actor and retries its task without limit. An input that always kills its
worker (a segfault in a native decoder, the OOM killer) would then be retried forever and the run
would never end. Every worker therefore registers the row it is about to process with one small
ledger actor owned by the driver, and clears it when the row is done (failed rows included: those
are errors the operator caught). A row whose registration was never cleared was in flight when its
worker died; once that has happened `limit` times, the next worker records the row as failed
instead of processing it again, and the run goes on.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from facefab.operators.base import mark_failed

CRASH_ERROR_TYPE = "WorkerCrashed"


class _Ledger:
    """Ray actor: started-but-unfinished counts per (stage, row id)."""

    def __init__(self) -> None:
        self.in_flight: Counter[tuple[str, str]] = Counter()

    def begin(self, stage: str, row_id: str) -> int:
        """Attempts of this row at this stage that have started and never finished, this one included."""
        self.in_flight[(stage, row_id)] += 1
        return self.in_flight[(stage, row_id)]

    def end(self, stage: str, row_id: str) -> None:
        self.in_flight.pop((stage, row_id), None)


class CrashBudget:
    """Shipped to every worker of a run; `limit` worker deaths per input and stage."""

    def __init__(self, limit: int, name: str):
        import ray

        if limit < 1:
            raise ValueError(f"the crash budget must be at least 1, got {limit}")
        self.limit = limit
        # num_cpus=0: the ledger must never wait for a CPU the pipeline's workers hold
        self.ledger = ray.remote(num_cpus=0, max_restarts=0)(_Ledger).options(name=name).remote()

    def begin(self, stage: str, row: dict[str, Any]) -> dict[str, Any] | None:
        """None: go ahead. Otherwise the row, failed, because its workers died `limit` times."""
        import ray

        attempt = ray.get(self.ledger.begin.remote(stage, str(row.get("id"))))
        deaths = attempt - 1
        if deaths < self.limit:
            return None
        self.end(stage, row)
        return mark_failed(row, stage, CRASH_ERROR_TYPE,
                           f"worker crashed while processing this input {deaths} times (killed by a signal "
                           f"or out of memory); not retried again in this run (budget {self.limit}, "
                           "--max-attempts); the worker logs are in the folder the summary names")

    def end(self, stage: str, row: dict[str, Any]) -> None:
        self.ledger.end.remote(stage, str(row.get("id")))

    def close(self) -> None:
        import ray

        ray.kill(self.ledger)

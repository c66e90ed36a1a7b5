"""The one progress line of a pipeline run: inputs with output / total, rows per status, failures
per stage, elapsed and ETA (tqdm, on stderr). Ray Data's own bars are off unless `facefab -v`."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any


class RunProgress:
    def __init__(self, name: str, total_inputs: int, enabled: bool = True, stream=None):
        from tqdm import tqdm

        self.statuses: Counter[str] = Counter()
        self.failed_by_stage: Counter[str] = Counter()
        self._inputs_seen: set[str] = set()
        self.bar = tqdm(total=total_inputs, desc=name, unit="input", file=stream or sys.stderr,
                        dynamic_ncols=True, disable=not enabled,
                        bar_format="{desc}: {n_fmt}/{total_fmt} inputs |{bar:20}| [{elapsed}<{remaining}]{postfix}")

    def add(self, rows: list[dict[str, Any]], stage_of_error) -> None:
        """Count a batch of finished rows; `stage_of_error(row)` names the stage a failed row failed in."""
        new_inputs = {r.get("source_id") or r.get("id") for r in rows} - self._inputs_seen
        self._inputs_seen |= new_inputs
        for row in rows:
            status = row.get("status") or "ok"
            self.statuses[status] += 1
            if status == "failed":
                self.failed_by_stage[stage_of_error(row)] += 1
        postfix = " ".join(f"{k}={v}" for k, v in sorted(self.statuses.items()))
        if self.failed_by_stage:
            postfix += " | failed in: " + ", ".join(f"{k} {v}" for k, v in self.failed_by_stage.most_common(3))
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(len(new_inputs))

    def close(self) -> None:
        self.bar.close()

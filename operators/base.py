"""The operator contract every stage follows (preprocess operators and generators alike).

An operator declares the row columns it reads (`inputs`) and writes (`outputs`), the resources
one worker needs, whether it holds state (models -> actor pool) and whether it fans out (one row
-> many rows). `setup()` runs once per worker; `process_row(row)` does the work for one row.

Errors never escape a row: `apply()` turns an exception into that row's `failed` status with the
operator name, exception type and message, and `Filtered` into status `filtered` with the reason.
Rows that are not `ok` pass through untouched, so downstream operators skip them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from facefab.manifests.registry import Registry
from facefab.manifests.schemas import STATUS_FAILED, STATUS_FILTERED, STATUS_OK
from facefab.manifests.storage import check_input_uri, join_uri

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000


class OperatorError(Exception):
    """An expected, explainable failure of one row (e.g. 'no face found in 250 frames')."""


class Filtered(Exception):
    """The row is valid but does not pass a threshold; it is kept with status `filtered`."""


@dataclass(frozen=True)
class Resources:
    """What one worker of an operator needs, as a worker on a real node needs it, and how many
    workers a stateful operator's actor pool has (see facefab.pipelines.pools).

    On a cluster every worker asks for `num_cpus` (and `num_gpus` when the run uses GPUs) and a
    pool grows with the load from `min_pool_size` to `max_pool_size` actors (0: as long as the
    cluster has or can add room). A local run has a fixed pool of `pool_size` actors, at most one
    per CPU share of the machine (0: one per share), with CPUs scaled down so that the pools cannot
    starve the tasks on a small machine."""

    num_cpus: float = 0.5
    num_gpus: float = 0.0
    batch_size: int = 1
    pool_size: int = 1
    min_pool_size: int = 1
    max_pool_size: int = 0
    memory_bytes: int | None = None


@dataclass(frozen=True)
class RunContext:
    """Where a run writes and how to reach the store. Shipped to every worker."""

    out_root: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    use_gpu: bool = False
    allowed_input_roots: tuple[str, ...] | None = None  # see manifests.storage.check_input_uri

    def check_input(self, uri: str) -> None:
        """A row error (OperatorError) when `uri` may not be read as an input."""
        try:
            check_input_uri(uri, self.allowed_input_roots)
        except PermissionError as exc:
            raise OperatorError(str(exc)) from None

    def artifact_uri(self, kind: str, row_id: str, suffix: str) -> str:
        # Two-level fan-out by id prefix keeps folders small on object stores and local disks.
        return join_uri(self.out_root, "artifacts", kind, row_id[:2], f"{row_id}{suffix}")


def stable_id(*parts: Any) -> str:
    """Deterministic row id from its defining inputs, so reruns produce the same ids."""
    h = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return h[:20]


class Operator:
    """Base class. Subclasses set the class attributes and implement `process_row`."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    stateful: ClassVar[bool] = False  # True: hosted in an actor pool (models, caches)
    fan_out: ClassVar[bool] = False  # True: process_row returns a list of rows
    default_resources: ClassVar[Resources] = Resources()

    @dataclass
    class Config:
        """Operator settings; subclasses extend it with their own fields."""

    def __init__(self, config: "Operator.Config | dict | None" = None, ctx: RunContext | None = None,
                 resources: Resources | None = None):
        self.config = self._coerce_config(config)
        self.ctx = ctx or RunContext(out_root=".")
        self.resources = resources or self.default_resources
        self._is_setup = False

    @classmethod
    def _coerce_config(cls, config):
        if config is None:
            return cls.Config()
        if isinstance(config, cls.Config):
            return config
        if isinstance(config, dict):
            known = {f.name for f in fields(cls.Config)}
            unknown = set(config) - known
            if unknown:
                raise ValueError(f"{cls.name}: unknown config field(s) {sorted(unknown)}; known: {sorted(known)}")
            return cls.Config(**config)
        raise TypeError(f"{cls.name}: config must be {cls.Config.__name__} or dict, got {type(config).__name__}")

    def with_context(self, ctx: RunContext) -> "Operator":
        return type(self)(self.config, ctx, self.resources)

    # -- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        """Load models / open resources once per worker."""

    def ensure_setup(self) -> None:
        if not self._is_setup:
            self.setup()
            self._is_setup = True

    def process_row(self, row: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        raise NotImplementedError

    # -- the engine calls this -------------------------------------------------------------
    def apply(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Run on one row with error isolation; always returns a list of rows."""
        if row.get("status", STATUS_OK) != STATUS_OK:
            return [row]
        missing = [c for c in self.inputs if _is_missing(row.get(c))]
        if missing:
            return [mark_failed(row, self.name, "MissingInput",
                                f"{self.name} needs column(s) {missing}, which are empty on this row")]
        start = time.perf_counter()
        try:
            self.ensure_setup()
            result = self.process_row(dict(row))
        except Filtered as exc:
            return [mark(row, STATUS_FILTERED, self.name, "Filtered", str(exc))]
        except Exception as exc:  # noqa: BLE001 - any failure becomes the row's error
            log.debug("%s failed on row %s:\n%s", self.name, row.get("id"), traceback.format_exc())
            return [mark_failed(row, self.name, type(exc).__name__, str(exc) or repr(exc))]
        elapsed = time.perf_counter() - start
        outs = result if isinstance(result, list) else [result]
        if not self.fan_out and len(outs) != 1:
            return [mark_failed(row, self.name, "OperatorBug", f"{self.name} returned {len(outs)} rows, expected 1")]
        if self.fan_out and not outs:  # keep the input accounted for in the manifest
            return [mark(row, STATUS_FILTERED, self.name, "Filtered", f"{self.name} produced no rows")]
        if self.fan_out:
            outs = [{**out, "parts": add_part(row.get("parts"), k, len(outs))} for k, out in enumerate(outs)]
        stamped = []
        for out in outs:
            merged = {**row, **out}
            merged["op_versions"] = _json_merge(row.get("op_versions"), {self.name: self.version})
            merged["op_seconds"] = _json_merge(row.get("op_seconds"), {self.name: round(elapsed / max(1, len(outs)), 6)})
            stamped.append(merged)
        return stamped


# Every stage under its one name: the `--operators` name, the config section, `operator` in row
# errors, the key of `op_versions` / `op_seconds` and of summary.json's per-operator table.
STAGES: Registry[type[Operator]] = Registry("stage")


def register_stage(cls: type[Operator]) -> type[Operator]:
    """Class decorator: register an operator class under its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return STAGES.register(cls.name)(cls)


class OperatorChain(Operator):
    """Consecutive operators hosted by one worker, applied one after another to each row.

    Fusing a chain keeps a clip's decoded frames (media.frame_cache) and its carried
    arrays in one process instead of shipping them between workers, and turns stage pipelining
    into data parallelism: each worker of the pool runs the whole chain on its own rows. Every
    member keeps its own error isolation, version stamp and timing.
    """

    name = "chain"

    def __init__(self, members: "list[Operator]", ctx: RunContext | None = None,
                 resources: Resources | None = None):
        if not members:
            raise ValueError("an operator chain needs at least one operator")
        self.members = [m.with_context(ctx) if ctx else m for m in members]
        self.name = "+".join(m.name for m in self.members)
        self.stateful = any(m.stateful for m in self.members)
        self.fan_out = any(m.fan_out for m in self.members)
        self.inputs = _chain_inputs(self.members)
        self.outputs = tuple(dict.fromkeys(c for m in self.members for c in m.outputs))
        self.config = None
        self.ctx = ctx or self.members[0].ctx
        self.resources = resources or Resources(
            num_cpus=max(m.resources.num_cpus for m in self.members),
            num_gpus=max(m.resources.num_gpus for m in self.members),
            batch_size=1)
        self._is_setup = False

    def with_context(self, ctx: RunContext) -> "OperatorChain":
        return OperatorChain(self.members, ctx, self.resources)

    def setup(self) -> None:
        for m in self.members:
            m.ensure_setup()

    def apply(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return self._apply_from(0, row)

    def _apply_from(self, first: int, row: dict[str, Any]) -> list[dict[str, Any]]:
        # Depth first: each row of a fan-out (a clip's face tracks) runs the rest of the chain before
        # the next starts, so the frames it shares with the stages after (its clip, its crop) are
        # still in the worker's frame cache when they read them.
        if first == len(self.members):
            return [row]
        return [out for r in self.members[first].apply(row) for out in self._apply_from(first + 1, r)]


def _chain_inputs(members: "list[Operator]") -> tuple[str, ...]:
    produced: set[str] = set()
    needed: list[str] = []
    for m in members:
        needed.extend(c for c in m.inputs if c not in produced and c not in needed)
        produced.update(m.outputs)
    return tuple(needed)


def add_part(parts: str | None, index: int, count: int) -> str:
    """The fan-out lineage of output `index` of `count`: '.'-joined 'i/n' steps from the input row
    (see manifests.resume.parts_complete, which tells a whole input from an interrupted one)."""
    return f"{parts}.{index}/{count}" if parts else f"{index}/{count}"


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN from pandas
        return True
    if isinstance(value, str) and value == "":
        return True
    return False


def _json_merge(existing: Any, new: dict[str, Any]) -> str:
    base = json.loads(existing) if isinstance(existing, str) and existing else {}
    base.update(new)
    return json.dumps(base, sort_keys=True)


def mark(row: dict[str, Any], status: str, operator: str, error_type: str, message: str) -> dict[str, Any]:
    out = dict(row)
    out["status"] = status
    out["error"] = json.dumps({"type": error_type, "message": message[:MAX_ERROR_CHARS], "operator": operator})
    return out


def mark_failed(row: dict[str, Any], operator: str, error_type: str, message: str) -> dict[str, Any]:
    return mark(row, STATUS_FAILED, operator, error_type, message)


__all__ = [
    "Filtered",
    "Operator",
    "OperatorChain",
    "OperatorError",
    "Resources",
    "RunContext",
    "mark",
    "mark_failed",
    "stable_id",
]

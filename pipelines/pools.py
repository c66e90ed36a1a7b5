"""How many workers each stage gets and what each asks Ray for: the run's plan.

Two placements, because a cluster can grow and a machine cannot:

- on a cluster (`facefab` joins $RAY_ADDRESS, as inside a RayJob) every worker asks for what its
  stage declares (`Resources.num_cpus`, `num_gpus`), and every stateful stage runs on an actor pool
  that starts small and grows with the load up to its maximum. Ray Data adds actors while the pool
  is busy and asks the cluster's autoscaler for nodes when they no longer fit, so a RayJob that
  starts on one node can grow up to its worker groups' `maxReplicas`;
- locally (Ray started on this machine) pools have a fixed size and CPUs are scaled down so the
  pools leave room for the read and map tasks on a small machine (`fit_resources`).

GPUs are requested only when the run uses them: `--gpus` / spec option `gpus`; without it, locally
when this machine has GPUs and on a cluster never (a GPU group at 0 replicas would never grow).
`plan_pools` is what the engine builds the dataset from and what `facefab run --dry-run` prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from facefab.operators.base import Operator

# Ray Data adds an actor only while the pool's actors have more than 1.75 tasks each in flight
# (its default upscaling threshold), so a pool that may grow queues two per actor; a fixed pool
# queues one, so that a busy actor never holds a block an idle one could take.
GROWING_POOL_TASKS_PER_ACTOR = 2


@dataclass(frozen=True)
class Placement:
    """Where a run goes: a cluster (which may grow) or this machine (which does not)."""

    cluster: bool
    cpus: float  # logical CPUs now (locally: the machine's)
    use_gpu: bool


@dataclass(frozen=True)
class StagePlan:
    name: str
    kind: str  # "actors" | "tasks" | "fan-out tasks" | "train" (Ray Train workers, min_actors of them)
    num_cpus: float  # "train": 0 when fitted to the cluster at start
    num_gpus: float = 0.0
    min_actors: int = 0
    max_actors: int | None = 0  # None: no bound of its own; Ray Data adds actors while the cluster has room
    tasks_per_actor: int = 1

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))

    def line(self) -> str:
        res = (f"{self.num_cpus:g} CPU" if self.num_cpus else "CPUs fitted at start") + (
            f" + {self.num_gpus:g} GPU" if self.num_gpus else "")
        if self.kind == "train":
            workers = f"{self.min_actors} Ray Train worker" + ("s" if self.min_actors != 1 else "")
            return f"{self.name}: {workers}, {res} each (the cluster must hold them at start)"
        if self.kind != "actors":
            return f"{self.name}: {self.kind}, {res} each"
        size = (f"{self.min_actors}" if self.min_actors == self.max_actors else
                f"{self.min_actors}..{'cluster max' if self.max_actors is None else self.max_actors}")
        return f"{self.name}: actor pool of {size}, {res} each"


def resolve_gpus(gpus: bool | None, cluster: bool, machine_has_gpus: Callable[[], bool]) -> bool:
    """The run's GPU use: the explicit setting; without one, on a cluster no, locally whether the
    machine has GPUs."""
    if gpus is not None:
        return gpus
    return False if cluster else bool(machine_has_gpus())


def pool_bounds(op: Operator, total_cpus: float) -> tuple[int, int]:
    """(min, max) actors of a stateful operator's pool on a machine of `total_cpus`: a fixed pool of
    one actor per share of num_cpus, or pool_size actors when that is fewer (a cluster-sized pool in
    a job spec would otherwise start dozens of model-holding actors on a laptop)."""
    res = op.resources
    per_cpu = max(1, int(total_cpus // max(res.num_cpus, 0.01)))
    n = min(res.pool_size, per_cpu) if res.pool_size > 0 else per_cpu
    return n, n


def fit_resources(operators: Sequence[Operator], total_cpus: float, actor_share: float = 0.5) -> dict[str, float]:
    """CPUs per worker for each operator of a local run, scaled to fit the machine.

    Declared resources describe a worker on a real node (a MediaPipe actor wants a core). On a
    small machine the actor pools' standing reservations would leave no CPU for the read and map
    tasks and the pipeline would wait forever, so actor pools are scaled to `actor_share` of the
    machine and tasks to half of what is left. These are Ray's logical CPUs (scheduling), not a
    cap on what a worker may use.
    """
    actors = [op for op in operators if op.stateful]
    demand = sum(op.resources.num_cpus * pool_bounds(op, total_cpus)[0] for op in actors)
    scale = min(1.0, actor_share * total_cpus / demand) if demand else 1.0
    free = total_cpus - demand * scale
    fitted = {}
    for op in operators:
        cpus = op.resources.num_cpus * scale if op.stateful else min(op.resources.num_cpus, free / 2)
        fitted[op.name] = max(0.01, round(cpus, 3))
    return fitted


def plan_pools(operators: Sequence[Operator], where: Placement, rows: int | None = None) -> list[StagePlan]:
    """One StagePlan per operator, in order (see the module docstring). `rows`: the number of input
    rows, when known; a local pool before any fan-out then starts no more actors than that (a worker
    with no row to take would only spend its start-up on the cores the others are using)."""
    fitted = None if where.cluster else fit_resources(operators, where.cpus)
    plans = []
    fanned = False
    for op in operators:
        res = op.resources
        gpus = res.num_gpus if where.use_gpu else 0.0
        cpus = res.num_cpus if fitted is None else fitted[op.name]
        if not op.stateful:
            plans.append(StagePlan(op.name, "fan-out tasks" if op.fan_out else "tasks", cpus, gpus))
        elif where.cluster:
            low = max(1, res.min_pool_size)
            high = max(res.max_pool_size, low) if res.max_pool_size > 0 else None  # None: no bound but Ray's
            grows = high is None or high > low
            plans.append(StagePlan(op.name, "actors", cpus, gpus, low, high,
                                   GROWING_POOL_TASKS_PER_ACTOR if grows else 1))
        else:
            low, high = pool_bounds(op, where.cpus)
            if rows is not None and not fanned:
                low = high = max(1, min(low, rows))
            plans.append(StagePlan(op.name, "actors", cpus, gpus, low, high))
        fanned = fanned or op.fan_out
    return plans


def describe(where: Placement) -> str:
    gpus = "GPUs on" if where.use_gpu else "no GPUs"
    if where.cluster:
        return (f"on a cluster ({gpus}): each worker asks for what its stage declares; actor pools start "
                f"small and grow with the load, and the autoscaler adds nodes for them")
    return (f"on this machine ({where.cpus:g} CPUs, {gpus}): fixed actor pools, CPUs scaled to fit "
            f"the machine")


def placement_now(gpus: bool | None) -> Placement:
    """The placement of a run on the Ray this process is connected to."""
    import ray

    from facefab.operators.runtime import cluster_has_gpus, joins_cluster

    cluster = joins_cluster()
    return Placement(cluster=cluster, cpus=float(ray.cluster_resources().get("CPU", 1.0)),
                     use_gpu=resolve_gpus(gpus, cluster, cluster_has_gpus))


def dry_run_placement(cluster: bool, gpus: bool | None) -> Placement:
    """The placement a run would have, without starting Ray."""
    cpus = 0.0 if cluster else float(os.cpu_count() or 1)
    return Placement(cluster=cluster, cpus=cpus, use_gpu=resolve_gpus(gpus, cluster, _torch_sees_gpus))


def _torch_sees_gpus() -> bool:
    import torch

    return torch.cuda.is_available()

"""Actor pools that grow with the cluster.

The plans (fast): on a cluster every worker asks for what its stage declares and every stateful
stage's pool starts small and grows up to its maximum; locally pools stay fixed and fitted to the
machine; GPUs only when the run uses them.

The real thing (slow): a preprocess run on Ray's autoscaling test cluster
(ray.cluster_utils.AutoscalingCluster: the real autoscaler, adding fake nodes on this machine) that
starts with one 2-CPU worker node grows onto the nodes the autoscaler adds for it, and its clips are
processed on more than one of them. It runs in a subprocess (`python test_autoscaling.py TMPDIR`):
the test session's own local Ray stays untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from facefab.operators.base import Operator, Resources
from facefab.operators.dub import DubConfig
from facefab.pipelines.dub import build_operators as dub_operators
from facefab.pipelines.pools import GROWING_POOL_TASKS_PER_ACTOR, Placement, plan_pools, resolve_gpus
from facefab.pipelines.preprocess import PreprocessConfig, preprocess_operators

REPO = Path(__file__).resolve().parents[2]
VIDEOS = REPO / "tests" / "data" / "videos"


def _by_name(plans):
    return {p.name: p for p in plans}


def test_on_a_cluster_pools_grow_and_workers_ask_for_what_stages_declare():
    ops = preprocess_operators(PreprocessConfig(workers=56))
    chain = ops[-1]
    assert chain.stateful and chain.resources.num_cpus == 1.0

    cluster = _by_name(plan_pools(ops, Placement(cluster=True, cpus=8, use_gpu=False)))
    pool = cluster[chain.name]
    # the cluster has 8 CPUs now: the pool still asks for up to 56 actors at 1 CPU each, not 56 x 1/7
    assert (pool.kind, pool.min_actors, pool.max_actors, pool.num_cpus) == ("actors", 1, 56, 1.0)
    assert pool.tasks_per_actor == GROWING_POOL_TASKS_PER_ACTOR
    assert cluster["probe"].num_cpus == ops[0].resources.num_cpus  # tasks as declared too
    assert pool.line() == f"{chain.name}: actor pool of 1..56, 1 CPU each"

    local = _by_name(plan_pools(ops, Placement(cluster=False, cpus=2, use_gpu=False)))
    pool = local[chain.name]
    # locally: at most one actor per CPU, fixed, CPUs scaled so the tasks keep room
    assert (pool.min_actors, pool.max_actors, pool.tasks_per_actor) == (2, 2, 1)
    assert pool.num_cpus * 2 <= 1.0


def test_dub_stages_each_grow_and_gpus_are_asked_for_only_when_the_run_uses_them():
    on = Placement(cluster=True, cpus=8, use_gpu=True)
    # the weight-free dub runs on CPU only: its stages are one chain per worker
    (weightfree,) = plan_pools(dub_operators(DubConfig(model="weightfree")), on)
    assert (weightfree.kind, weightfree.min_actors, weightfree.max_actors, weightfree.num_cpus,
            weightfree.num_gpus) == ("actors", 1, None, 1.0, 0.0)  # no bound but the cluster's, which grows
    assert weightfree.line() == "dub_analyze+lip_sync+dub_score: actor pool of 1..cluster max, 1 CPU each"
    unfused = plan_pools(dub_operators(DubConfig(model="weightfree", fuse=False)), on)
    assert [(p.kind, p.min_actors, p.max_actors, p.num_cpus, p.num_gpus) for p in unfused] == [
        ("actors", 1, None, 1.0, 0.0)] * 3
    assert unfused[0].line() == "dub_analyze: actor pool of 1..cluster max, 1 CPU each"

    mytalk = _by_name(plan_pools(dub_operators(DubConfig(model="mytalk", checkpoint="ckpt")), on))
    assert (mytalk["lip_sync"].num_cpus, mytalk["lip_sync"].num_gpus, mytalk["lip_sync"].max_actors) == (0.5, 1.0, None)

    off = _by_name(plan_pools(dub_operators(DubConfig(model="mytalk", checkpoint="ckpt")),
                              Placement(cluster=True, cpus=8, use_gpu=False)))
    assert off["lip_sync"].num_gpus == 0.0


def test_a_local_pool_before_any_fan_out_starts_no_more_actors_than_there_are_rows():
    local = Placement(cluster=False, cpus=2, use_gpu=False)
    dub = dub_operators(DubConfig(model="weightfree"))
    assert [p.max_actors for p in plan_pools(dub, local)] == [2]  # one per CPU share
    assert [(p.min_actors, p.max_actors) for p in plan_pools(dub, local, rows=1)] == [(1, 1)]
    assert [p.max_actors for p in plan_pools(dub, local, rows=5)] == [2]
    # preprocess's chain comes after the shots' fan-out: one video can make many clip rows
    ops = preprocess_operators(PreprocessConfig(workers=2))
    assert plan_pools(ops, local, rows=1)[-1].max_actors == plan_pools(ops, local)[-1].max_actors == 2


class _Pinned(Operator):
    name = "pinned"
    stateful = True
    default_resources = Resources(num_cpus=1.0, max_pool_size=1)


def test_a_pool_capped_at_one_actor_stays_fixed_on_a_cluster():
    (plan,) = plan_pools([_Pinned()], Placement(cluster=True, cpus=8, use_gpu=False))
    assert (plan.min_actors, plan.max_actors, plan.tasks_per_actor) == (1, 1, 1)


def test_gpu_use_is_explicit_on_a_cluster_and_detected_locally():
    def never_asked():
        raise AssertionError("a cluster's GPUs are not auto-detected")

    assert resolve_gpus(None, True, never_asked) is False
    assert resolve_gpus(True, True, never_asked) is True
    assert resolve_gpus(None, False, lambda: True) is True
    assert resolve_gpus(False, False, lambda: True) is False


# -- a real run on an autoscaling cluster -----------------------------------------------------------

SECONDS_PER_CLIP = 2.5  # stands for per-clip work; fake nodes share this machine's cores, so only
# time that does not need a core (this sleep) lets the nodes the autoscaler adds finish sooner
WORKER_CPUS, MAX_WORKERS = 2, 3


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_preprocess_grows_onto_the_nodes_the_autoscaler_adds():
    scratch = tempfile.mkdtemp(prefix="ffas-")  # short: Ray's socket paths live under it
    try:
        done = subprocess.run([sys.executable, __file__, scratch], capture_output=True, text=True, timeout=540,
                              check=False, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        _kill_cluster(scratch)
        shutil.rmtree(scratch, ignore_errors=True)

    rows = result["rows"]
    assert result["counts"]["ok"] == len(rows) >= 30, result["counts"]
    assert result["plan"] == f"audio+where_am_i: actor pool of 1..{MAX_WORKERS * WORKER_CPUS}, 1 CPU each"
    start_nodes, end_nodes = set(result["nodes_at_start"]), set(result["nodes_at_end"])
    assert len(start_nodes) == 2  # the head (no CPUs, like a KubeRay head) and one worker node
    added = end_nodes - start_nodes
    assert added, "the autoscaler added no node"
    used = {row["node_id"] for row in rows}
    assert len(used) >= 2 and used & added, (
        f"clips ran on {len(used)} node(s), none of them added by the autoscaler; nodes added: {len(added)}")


# The driver, run in a fresh interpreter by the test above.

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_pids(scratch: str) -> list[int]:
    import psutil

    mine = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.info["pid"] != os.getpid() and any(scratch in arg for arg in proc.info["cmdline"] or ()):
            mine.append(proc.info["pid"])
    return mine


def _kill_cluster(scratch: str) -> None:
    """End every process of the test cluster: each has its private temp folder on its command line."""
    import psutil

    procs = []
    for pid in _cluster_pids(scratch):
        try:
            procs.append(psutil.Process(pid))
            procs[-1].terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        proc.kill()


def _test_cluster(scratch: str):
    """Ray's AutoscalingCluster, with three changes for a shared machine: the base config it reads
    from Ray's source tree (example.yaml, not in the wheel) is written out here, the node provider is
    loaded as an `external` module (for the same reason), and start/shutdown neither run
    `ray stop --force` (which ends every Ray on the machine, other sessions' included) nor use the
    default port and temp folder."""
    from ray.cluster_utils import AutoscalingCluster

    port = _free_port()

    class SharedMachineAutoscalingCluster(AutoscalingCluster):
        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
            return {
                "cluster_name": "facefab-test", "max_workers": MAX_WORKERS,
                "provider": {"type": "external",
                             "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
                             "use_node_id_as_ip": True, "disable_node_updaters": True,
                             "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
                "available_node_types": {**worker_node_types, "ray.head.default": {
                    "resources": head_resources, "node_config": {}, "max_workers": 0}},
                "head_node_type": "ray.head.default", "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
                "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "rsync_exclude": [],
                "rsync_filter": [], "file_mounts_sync_continuously": False, "initialization_commands": [],
                "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
                "head_start_ray_commands": [], "worker_start_ray_commands": [], **config_kwargs}

        def start(self):
            config = os.path.join(scratch, "autoscaling.json")
            Path(config).write_text(json.dumps(self._config))
            env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
            subprocess.run(["ray", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                            f"--temp-dir={scratch}", f"--autoscaling-config={config}", "--num-cpus=0",
                            "--object-store-memory=150000000", "--include-dashboard=false",
                            "--disable-usage-stats"], env=env, check=True, stdout=subprocess.DEVNULL)
            return f"127.0.0.1:{port}"

        def shutdown(self):
            _kill_cluster(scratch)

    return SharedMachineAutoscalingCluster(
        head_resources={"CPU": 0},
        worker_node_types={"cpu": {"resources": {"CPU": WORKER_CPUS, "object_store_memory": 150_000_000},
                                   "node_config": {}, "min_workers": 1, "max_workers": MAX_WORKERS}})


class WhereAmI(Operator):
    """Records the node that processed the clip, after SECONDS_PER_CLIP of (simulated) work."""

    name = "where_am_i"
    outputs = ("node_id",)

    def process_row(self, row):
        import ray

        time.sleep(SECONDS_PER_CLIP)
        return {"node_id": ray.get_runtime_context().get_node_id()}


def _alive_nodes(ray) -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])


def _wait_for(what: str, ready, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while not ready():
        if time.time() > deadline:
            raise TimeoutError(f"test cluster: {what} not within {seconds:.0f} s")
        time.sleep(0.5)


def _drive(scratch: str) -> int:
    import ray

    from facefab.manifests import read_manifest
    from facefab.operators.base import RunContext
    from facefab.pipelines.engine import PipelineRun, run_pipeline
    from facefab.pipelines.inputs import video_inputs
    from facefab.pipelines.pools import placement_now
    from facefab.pipelines.preprocess import build_operators, plan_stages

    cluster = _test_cluster(scratch)
    address = cluster.start()
    try:
        os.environ["RAY_ADDRESS"] = address  # as inside a RayJob: facefab joins the cluster
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        _wait_for("the first worker node", lambda: ray.cluster_resources().get("CPU", 0) >= WORKER_CPUS)
        nodes_at_start = _alive_nodes(ray)

        config = PreprocessConfig(operators=["probe", "shots", "audio"], workers=MAX_WORKERS * WORKER_CPUS)
        config.shots.max_clip, config.shots.min_clip = 1.0, 0.5  # many short clips: the work to spread
        ops = plan_stages([*build_operators(config), WhereAmI()], config)
        out = os.path.join(scratch, "out")
        summary = run_pipeline(PipelineRun("preprocess", "clips", RunContext(out), progress=False),
                               ops, video_inputs([str(VIDEOS)]))
        rows = [{"node_id": r["node_id"]} for r in read_manifest(out).to_pylist()]
        (plan,) = [p for p in plan_pools(ops, placement_now(None)) if p.kind == "actors"]
        print(json.dumps({"counts": summary.run_counts, "rows": rows, "plan": plan.line(),
                          "nodes_at_start": nodes_at_start, "nodes_at_end": _alive_nodes(ray)}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(_drive(sys.argv[1]))

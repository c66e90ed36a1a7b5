"""`facefab train`, the driver side: Ray Train (TorchTrainer) + DeepSpeed over preprocess manifests.

run_training validates the config, makes the system ready (catalog, config), splits the manifest
rows (data), starts a TorchTrainer whose workers each run a Trainer (trainer) and returns the run's
summary.json (summary). The pieces:

    systems.py          the TrainingSystem contract and the SYSTEMS registry
    catalog.py          load_systems(): imports the system modules, which register themselves
    config.py           TrainConfig, validate, a system configured for a run
    data.py             manifest rows -> held-out split -> Ray Dataset of samples
    deepspeed_config.py the engine config (ZeRO stage, offload, bf16, --deepspeed JSON)
    trainer.py          the worker: Trainer (setup, train, evaluate, save_checkpoint, write_summary)
    checkpoints.py      the checkpoint layout under CKPT_ROOT/<run_name>/, resume, init_from weights
    export.py           CKPT_ROOT/<run>/export/ and the merged CKPT_ROOT/<export group>/
    summary.py          summary.json and loss_curve.png
    memory.py           peak RSS / GPU memory and optimizer state per worker

Rerunning with the same run name and CKPT_ROOT resumes from the latest registered checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from typing import Any

from facefab.manifests.storage import join_uri, open_fs

from .catalog import load_system, load_systems
from .checkpoints import ray_storage
from .config import TrainConfig, configure_system, default_run_name, resolve_model_config, validate
from .data import build_dataset, load_rows, split_rows
from .deepspeed_config import deepspeed_config
from .export import group_export_uri
from .export import merge_into as _merge_upload_dir
from .summary import SUMMARY_FILE

# the names code imported from here before the split into modules (tests/test_mytalk_e2e.py,
# tests/test_infra.py), and SYSTEMS from __getattr__ below, which keeps this import light
__all__ = ["TrainConfig", "_merge_upload_dir", "configure_system", "load_system", "read_summary",
           "resolve_model_config", "run_training", "summary_line", "validate"]


def __getattr__(name: str) -> Any:
    if name == "SYSTEMS":  # every system registered: imports the system modules (torch) on first use
        return load_systems()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_training(cfg: TrainConfig, data_root: str, ckpt_root: str, storage_options: dict | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Train (or resume) `cfg.system` on the manifests under `data_root`; returns summary.json."""
    validate(cfg)
    opts = dict(storage_options or {})
    system = load_system(cfg.system)
    model_config = resolve_model_config(system, cfg)
    configure_system(system, cfg, model_config)
    use_gpu = cfg.gpus_per_worker > 0
    ds_config = deepspeed_config(cfg, use_gpu, opts) if cfg.strategy == "deepspeed" else None
    if ds_config is not None and int(ds_config["train_micro_batch_size_per_gpu"]) != cfg.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=int(ds_config["train_micro_batch_size_per_gpu"]))

    rows = load_rows(data_root, opts)
    train_rows, val_rows = split_rows(rows, cfg)
    if not train_rows:
        raise ValueError(f"{data_root}: no training clips left after holding out {len(val_rows)}")
    run_name = cfg.run_name or default_run_name(cfg.system, data_root, cfg.stage)
    run_uri = join_uri(ckpt_root, run_name)
    group_uri = group_export_uri(system, ckpt_root, run_name)
    system.group_uri, system.storage_options = group_uri, opts

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from facefab.operators.runtime import init_ray

    from .trainer import train_loop_per_worker

    init_ray(progress=progress)  # workers' output (DeepSpeed, torch) stays in Ray's log folder
    console = ConsoleRelay()  # rank 0's progress lines, printed here
    if cfg.cpus_per_worker is None:
        cfg = dataclasses.replace(cfg, cpus_per_worker=fit_worker_cpus(cfg, ray.cluster_resources().get("CPU", 0)))
    if not os.environ.get("RAY_ADDRESS"):
        free = ray.cluster_resources().get("CPU", 0) - cfg.workers * cfg.cpus_per_worker
        if free < cfg.data_cpus:
            raise ValueError(f"{cfg.workers} worker(s) x {cfg.cpus_per_worker} CPUs leave {free:g} of "
                             f"{ray.cluster_resources().get('CPU', 0):g} CPUs for data loading "
                             f"(needs {cfg.data_cpus}); lower --cpus-per-worker or --workers")
    storage_path, storage_fs = ray_storage(ckpt_root, opts)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": dataclasses.asdict(cfg), "system": system, "model_config": model_config, "ds_config": ds_config,
            "storage_options": opts, "run_uri": run_uri, "run_name": run_name, "data_root": data_root,
            "val_rows": val_rows, "num_train_rows": len(train_rows), "progress": progress,
            "group_uri": group_uri, "console": console.queue,
        },
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=storage_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
        datasets={"train": build_dataset(train_rows, system, opts, cfg)},
    )
    with console:
        trainer.fit()
    return read_summary(run_uri, opts)


class ConsoleRelay:
    """A queue the rank-0 worker puts its progress lines on, printed on the driver's stdout by a
    thread while the run lasts (the workers' own output goes to Ray's log folder, not the console)."""

    def __init__(self):
        from ray.util.queue import Queue

        self.queue = Queue(maxsize=1000, actor_options={"num_cpus": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="facefab-train-console", daemon=True)

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                print(self.queue.get(timeout=0.5), flush=True)
            except Empty:
                if self._stop.is_set():
                    return

    def __enter__(self) -> ConsoleRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.queue.shutdown()


def fit_worker_cpus(cfg, cluster_cpus: float) -> float:
    """CPUs per training worker when --cpus-per-worker is not given: 1 on a cluster (the autoscaler
    adds nodes), locally the CPUs left after data loading, shared by the workers (at most 1 each,
    in steps of 0.05, at least 0.05)."""
    if os.environ.get("RAY_ADDRESS"):
        return 1.0
    share = (cluster_cpus - cfg.data_cpus) / max(1, cfg.workers)
    return max(0.05, min(1.0, int(share * 20) / 20))


def read_summary(run_uri: str, storage_options: dict | None = None) -> dict[str, Any]:
    """CKPT_ROOT/<run>/summary.json, read fresh (the workers rewrote it; no cached listing/ETag)."""
    fs, path = open_fs(join_uri(run_uri, SUMMARY_FILE), storage_options)
    fs.invalidate_cache()
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the terminal: steps, resume, loss, held-out metrics, throughput, export."""
    ev = summary.get("eval") or {}
    extra = "".join(f", held-out {k} {v:.3f}" for k, v in ev.items() if k != "step")
    resumed = summary.get("resumed_from_step")
    how = f"resumed from step {resumed}" if resumed is not None else "from scratch"
    sps = summary.get("samples_per_s")
    return (f"train {summary['system']} ({summary['run_name']}): step {summary['step']}/{summary['max_steps']} "
            f"{how}; loss {summary.get('loss')}{extra}; "
            f"{'%.2f' % sps if sps else '?'} samples/s; export {summary.get('export_uri')}"
            + (f" (+ {summary['group_export_uri']})" if summary.get("group_export_uri") else ""))

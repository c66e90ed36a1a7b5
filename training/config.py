"""TrainConfig (one training run: YAML keys and `facefab train` flags), its checks, and a system
made ready for it (model kwargs resolved, configure() called)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from facefab.manifests.storage import is_local

from .catalog import system_class
from .systems import TrainingSystem

STRATEGIES = ("deepspeed", "ddp")


@dataclass
class TrainConfig:
    """One training run. Every field is a YAML key and a flag (`max_steps` -> `--max-steps`)."""

    system: str = field(default="", metadata={"help": "training system name (`facefab train --help` lists them)"})
    preset: str = field(default="", metadata={"help": "model size preset of the system (e.g. tiny); empty: paper size"})
    model: dict[str, Any] = field(default_factory=dict, metadata={"help": "model config overrides (JSON)"})
    stage: str = field(default="", metadata={"help": "training stage (system-defined); empty: the default stage"})
    system_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "system option overrides (JSON)"})
    init_from: str | None = field(default=None, metadata={"help": "export dir whose weights initialise a fresh run "
                                                          "(e.g. the previous stage's CKPT_ROOT/<run>/export)"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps in total (resumed runs included)"})
    batch_size: int = field(default=4, metadata={"help": "samples per worker per step"})
    lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm; 0 disables"})
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    num_to_keep: int = field(default=2, metadata={"help": "checkpoints kept in storage"})
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = field(default=None, metadata={
        "help": "CPUs per worker; default: 1 on a cluster ($RAY_ADDRESS), locally the machine's CPUs less the "
                "data loading, shared by the workers (as the preprocess actor pools fit themselves)"})
    strategy: str = field(default="deepspeed", metadata={"help": "deepspeed | ddp (plain DistributedDataParallel)"})
    zero_stage: int = field(default=2, metadata={"help": "DeepSpeed ZeRO stage 0, 1 or 2"})
    offload: bool = field(default=False, metadata={"help": "ZeRO-Offload the optimizer state to CPU"})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed JSON config; its keys override the defaults"})
    seed: int = field(default=0, metadata={
        "help": "seeds the model's initialisation, the local shuffle and the held-out split; the samples a clip "
                "draws are fresh every pass unless --system-options sets {\"seed\": N}"})
    val_clips: int = field(default=1, metadata={"help": "clips held out for evaluation (when the manifest has no split)"})
    evaluate: bool = field(default=True, metadata={"help": "run the system's evaluate() at every checkpoint"})
    data_cpus: float = field(default=0.25, metadata={"help": "CPUs per Ray Data sample-building task"})
    shuffle_buffer: int = field(default=64, metadata={"help": "local shuffle buffer (samples) per worker; 0: off"})
    log_every: int = field(default=10, metadata={"help": "print a progress line every N steps"})
    max_failures: int = field(default=0, metadata={"help": "worker-group restarts from the latest checkpoint "
                                                   "before the run fails (rerunning the command also resumes)"})
    run_name: str | None = field(default=None, metadata={"help": "default: <system>[-<stage>]-<data folder>-<hash>"})


def validate(cfg: TrainConfig) -> None:
    """ValueError for a config no run can start with (imports the systems to check the name)."""
    system_class(cfg.system)
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {cfg.strategy!r}")
    if cfg.zero_stage not in (0, 1, 2):
        raise ValueError(f"zero_stage must be 0, 1 or 2 (stage 3 needs gathered parameters for eval/export), "
                         f"got {cfg.zero_stage}")
    for name in ("max_steps", "batch_size", "checkpoint_every", "workers", "num_to_keep"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.gpus_per_worker < 0 or (cfg.cpus_per_worker is not None and cfg.cpus_per_worker <= 0):
        raise ValueError("gpus_per_worker must be >= 0 and cpus_per_worker > 0")


def default_run_name(system: str, data_root: str, stage: str = "") -> str:
    """<system>[-<stage>]-<data folder>-<hash of the data root>."""
    root = os.path.abspath(data_root) if is_local(data_root) else data_root.rstrip("/")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(root.rstrip("/")) or "data").strip("-") or "data"
    digest = hashlib.sha1(root.encode()).hexdigest()[:8]
    return "-".join(p for p in (system, stage, base, digest) if p)


def resolve_model_config(system: TrainingSystem, cfg: TrainConfig) -> dict[str, Any]:
    """default_config() <- preset <- cfg.model."""
    model_config = dict(system.default_config())
    if cfg.preset:
        if cfg.preset not in system.presets:
            raise ValueError(f"{cfg.system}: unknown preset {cfg.preset!r}; presets: {sorted(system.presets)}")
        model_config.update(system.presets[cfg.preset])
    model_config.update(cfg.model or {})
    return model_config


def configure_system(system: TrainingSystem, cfg: TrainConfig, model_config: dict[str, Any]) -> None:
    """The run's model kwargs, --stage and --system-options given to the system (ValueError if it has none)."""
    system.configure(model_config=model_config, stage=cfg.stage, options=cfg.system_options)

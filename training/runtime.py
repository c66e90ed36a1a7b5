"""Training runtime: Ray Train (TorchTrainer) + DeepSpeed over preprocess manifests.

A *system* plugs in through this protocol (``SYSTEMS`` maps a name to its class, imported lazily):

    class TrainableSystem(Protocol):
        name: str
        def default_config(self) -> dict                       # model kwargs (paper size)
        def build_model(self, model_config: dict) -> torch.nn.Module   # a diffusers ModelMixin
        def make_samples(self, row: dict, storage_options: dict | None) -> list[dict[str, np.ndarray]]
        def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]
        def export(self, model, out_dir: str) -> None         # save_pretrained layout

and optionally ``presets`` (name -> model kwargs, e.g. "tiny"), ``stages`` (name -> option
overrides; a stage is config), ``configure(model_config=, stage=, options=)`` (called before
anything else; the configured instance is what Ray Data tasks and workers receive),
``evaluate(model, samples) -> dict`` (run on rank 0 at every checkpoint over the held-out clips)
and ``make_eval_samples(row, storage_options)`` (deterministic held-out samples; default
``make_samples``), and ``export_group`` (a folder name, see "Shared export" below).

Data: ROOT/manifest rows with status "ok" -> held-out clips split off (``split`` column "val" if
the manifest has one, else ``val_clips`` rows chosen by a seeded hash of their id) ->
``ray.data.from_items`` -> ``flat_map(system.make_samples)`` -> one streaming shard per worker
(``get_dataset_shard``), re-read every pass, shuffled locally.

Run layout, CKPT_ROOT/<run_name>/ (local or any fsspec URI, e.g. s3:// with an endpoint):

    checkpoint_00000200/            one per checkpoint_every steps (newest num_to_keep kept)
        deepspeed/                  engine.save_checkpoint: mp_rank_00_model_states.pt (parameter
                                    names prefixed "model.": the engine wraps model + loss) and one
                                    zero_pp_rank_<r>_mp_rank_00_optim_states.pt per rank
                                    (strategy "ddp": model.pt + optimizer.pt from rank 0 instead)
        trainer_state.json          step, epoch, loss history, evals, runs so far
    checkpoint_manager_snapshot.json   Ray Train's record of the registered checkpoints
    export/                         system.export at the end (config.json + *.safetensors)
    summary.json, loss_curve.png    rewritten at every checkpoint and at the end

Shared export: a system with ``export_group = "<group>"`` is ALSO exported, at the end, into
CKPT_ROOT/<group>/, merged with what is there: its files are written over the same names, top-level
JSON objects (e.g. a pipeline's model_index.json) are merged key by key, and nothing else is
deleted, so systems that each export one part of a pipeline fill one loadable folder. The MyTalk
stages do this (group "mytalk"):

    facefab train mytalk-motion --data ROOT --out CKPT --preset tiny     -> CKPT/mytalk/motion/
    facefab train mytalk-render --data ROOT --out CKPT --preset tiny     -> CKPT/mytalk/renderer/
    facefab dub --video V.mp4 --audio A.wav --model mytalk --checkpoint CKPT/mytalk --out OUT

summary.json records it as ``group_export_uri``. (Two runs of one group that finish at the same
instant may race on the merged JSON; run the stages one after the other.)

Resume: rerunning with the same run name and CKPT_ROOT makes Ray Train hand every worker the
latest registered checkpoint (``ray.train.get_checkpoint()``); the workers load the DeepSpeed
engine state (module, ZeRO-partitioned optimizer state) and trainer_state.json and carry on from
that step. The data stream restarts from a fresh pass (sample order is not restored). A run that
already reached max_steps only re-exports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import logging
import os
import re
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from facefab.manifests.io import read_manifest
from facefab.manifests.schemas import STATUS_OK
from facefab.manifests.storage import (
    atomic_put_file,
    atomic_write_bytes,
    is_local,
    join_uri,
    local_path_of,
    open_fs,
    read_bytes,
)

log = logging.getLogger(__name__)

# name -> "module:Class", imported on use so a missing optional system fails only when asked for
SYSTEMS: dict[str, str] = {
    "facevid2vid": "facefab.training.facevid2vid:FaceVid2VidSystem",
    "mytalk-motion": "facefab.training.mytalk:MyTalkMotionSystem",
    "mytalk-render": "facefab.training.mytalk:MyTalkRenderSystem",
}

STRATEGIES = ("deepspeed", "ddp")
CHECKPOINT_PREFIX = "checkpoint_"
STATE_FILE = "trainer_state.json"
DS_TAG = "deepspeed"
SUMMARY_FILE = "summary.json"
CURVE_FILE = "loss_curve.png"
EXPORT_DIR = "export"
# manifest columns that are bookkeeping, not sample inputs (and do not travel well as items)
_BOOKKEEPING = {"error", "op_versions", "op_seconds", "updated_at", "attempts", "run_id"}


@dataclass
class TrainConfig:
    """One training run. Every field is a YAML key and a flag (`max_steps` -> `--max-steps`)."""

    system: str = field(default="", metadata={"help": "system name: " + ", ".join(SYSTEMS)})
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
    cpus_per_worker: float = 1.0
    strategy: str = field(default="deepspeed", metadata={"help": "deepspeed | ddp (plain DistributedDataParallel)"})
    zero_stage: int = field(default=2, metadata={"help": "DeepSpeed ZeRO stage 0, 1 or 2"})
    offload: bool = field(default=False, metadata={"help": "ZeRO-Offload the optimizer state to CPU"})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed JSON config; its keys override the defaults"})
    seed: int = 0
    val_clips: int = field(default=1, metadata={"help": "clips held out for evaluation (when the manifest has no split)"})
    evaluate: bool = field(default=True, metadata={"help": "run the system's evaluate() at every checkpoint"})
    data_cpus: float = field(default=0.25, metadata={"help": "CPUs per Ray Data sample-building task"})
    shuffle_buffer: int = field(default=64, metadata={"help": "local shuffle buffer (samples) per worker; 0: off"})
    log_every: int = field(default=10, metadata={"help": "print a progress line every N steps"})
    max_failures: int = field(default=0, metadata={"help": "worker-group restarts from the latest checkpoint "
                                                   "before the run fails (rerunning the command also resumes)"})
    run_name: str | None = field(default=None, metadata={"help": "default: <system>[-<stage>]-<data folder>-<hash>"})


# -- systems -------------------------------------------------------------------------------------

def load_system(name: str):
    """Instantiate the system registered as `name` (import on demand, clear error if absent)."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown training system {name!r}; known: {sorted(SYSTEMS)}")
    module_name, _, class_name = SYSTEMS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ValueError(f"training system {name!r} is not available: module {module_name} is not "
                             f"installed in this facefab ({exc})") from exc
        raise
    cls = getattr(module, class_name, None)
    if cls is None:  # tolerate another class name: the class whose `name` is the system's
        candidates = [obj for obj in vars(module).values()
                      if isinstance(obj, type) and getattr(obj, "name", None) == name and hasattr(obj, "loss")]
        if not candidates:
            raise ValueError(f"training system {name!r}: {module_name} defines no {class_name} "
                             f"(nor any class with name = {name!r})")
        cls = candidates[0]
    return cls()


def resolve_model_config(system, cfg: TrainConfig) -> dict[str, Any]:
    """default_config() <- preset <- cfg.model."""
    model_config = dict(system.default_config())
    if cfg.preset:
        presets = getattr(system, "presets", {}) or {}
        if cfg.preset not in presets:
            raise ValueError(f"{cfg.system}: unknown preset {cfg.preset!r}; presets: {sorted(presets)}")
        model_config.update(presets[cfg.preset])
    model_config.update(cfg.model or {})
    return model_config


def configure_system(system, cfg: TrainConfig, model_config: dict[str, Any]) -> None:
    if hasattr(system, "configure"):
        system.configure(model_config=model_config, stage=cfg.stage, options=cfg.system_options)
    elif cfg.stage or cfg.system_options:
        raise ValueError(f"{cfg.system} has no stages or options (no configure())")


def default_run_name(system: str, data_root: str, stage: str = "") -> str:
    root = os.path.abspath(data_root) if is_local(data_root) else data_root.rstrip("/")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(root.rstrip("/")) or "data").strip("-") or "data"
    digest = hashlib.sha1(root.encode()).hexdigest()[:8]
    return "-".join(p for p in (system, stage, base, digest) if p)


def validate(cfg: TrainConfig) -> None:
    if cfg.system not in SYSTEMS:
        raise ValueError(f"unknown training system {cfg.system!r}; known: {sorted(SYSTEMS)}")
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {cfg.strategy!r}")
    if cfg.zero_stage not in (0, 1, 2):
        raise ValueError(f"zero_stage must be 0, 1 or 2 (stage 3 needs gathered parameters for eval/export), "
                         f"got {cfg.zero_stage}")
    for name in ("max_steps", "batch_size", "checkpoint_every", "workers", "num_to_keep"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.gpus_per_worker < 0 or cfg.cpus_per_worker <= 0:
        raise ValueError("gpus_per_worker must be >= 0 and cpus_per_worker > 0")


# -- DeepSpeed config ------------------------------------------------------------------------------

def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def deepspeed_config(cfg: TrainConfig, use_gpu: bool, storage_options: dict | None = None) -> dict[str, Any]:
    """ZeRO `zero_stage` (+ optimizer offload), bf16 on GPU / fp32 on CPU; --deepspeed JSON on top."""
    # buckets (elements): DeepSpeed's 5e8 default allocates a 2 GB fp32 reduce buffer per rank; on CPU
    # one about DDP's 25 MB bucket keeps memory flat at no measurable cost
    bucket = int(5e7) if use_gpu else int(5e6)
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "contiguous_gradients": True, "overlap_comm": use_gpu,
                            "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # the torch AdamW built in the worker
        "bf16": {"enabled": use_gpu},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.grad_clip > 0:
        config["gradient_clipping"] = cfg.grad_clip
    if cfg.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
        config["zero_force_ds_cpu_optimizer"] = False
    if cfg.deepspeed:
        try:
            user = json.loads(read_bytes(cfg.deepspeed, storage_options))
        except FileNotFoundError:
            raise FileNotFoundError(f"DeepSpeed config not found: {cfg.deepspeed}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{cfg.deepspeed} is not valid JSON: {exc}") from None
        user.pop("train_batch_size", None)  # derived from the micro batch and the world size
        config = _merge(config, user)
    if int(config.get("gradient_accumulation_steps", 1)) != 1:
        raise ValueError("gradient_accumulation_steps != 1 is not supported; raise --batch-size or --workers")
    stage = int(config.get("zero_optimization", {}).get("stage", 0))
    if stage not in (0, 1, 2):
        raise ValueError(f"ZeRO stage {stage} is not supported here (0, 1 or 2)")
    if not use_gpu:
        for key in ("bf16", "fp16"):
            if config.get(key, {}).get("enabled"):
                log.warning("%s is GPU-only here; training in fp32 on CPU", key)
                config[key] = {**config[key], "enabled": False}
    return config


# -- data -------------------------------------------------------------------------------------------

def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in _BOOKKEEPING}


def split_rows(rows: list[dict[str, Any]], cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows)."""
    if any(r.get("split") for r in rows):
        train = [r for r in rows if (r.get("split") or "train") == "train"]
        val = [r for r in rows if r.get("split") in ("val", "validation")]
        return train, val
    if cfg.val_clips <= 0 or len(rows) <= cfg.val_clips:
        return list(rows), []
    ranked = sorted(rows, key=lambda r: hashlib.sha1(f"{cfg.seed}:{r['id']}".encode()).hexdigest())
    return ranked[cfg.val_clips:], ranked[:cfg.val_clips]


def load_rows(data_root: str, storage_options: dict | None) -> list[dict[str, Any]]:
    table = read_manifest(data_root, storage_options)
    if table.num_rows == 0:
        raise ValueError(f"no manifest under {join_uri(data_root, 'manifest')} (run `facefab preprocess` first)")
    rows = [_plain_row(r) for r in table.to_pylist() if r.get("status") == STATUS_OK]
    if not rows:
        raise ValueError(f"{data_root}: the manifest has no rows with status 'ok'")
    return sorted(rows, key=lambda r: r["id"])


def _samples_of_row(row: dict[str, Any], system, storage_options: dict | None) -> list[dict[str, Any]]:
    try:
        return system.make_samples(row, storage_options)
    except Exception as exc:  # noqa: BLE001 -- one bad clip must not stop a training run
        log.warning("skipping row %s: %s: %s", row.get("id"), type(exc).__name__, exc)
        return []


def build_dataset(rows: list[dict[str, Any]], system, storage_options: dict | None, cfg: TrainConfig):
    """Lazy Ray Dataset of samples: one read task per manifest row (up to 2000 blocks), fanned out
    to the system's samples. Re-executed on every pass, so make_samples may draw new samples."""
    import ray

    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 2000)))
    return ds.flat_map(_samples_of_row, fn_kwargs={"system": system, "storage_options": storage_options},
                       num_cpus=cfg.data_cpus)


# -- storage ----------------------------------------------------------------------------------------

def ray_storage(ckpt_root: str, storage_options: dict | None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: a local folder, or any fsspec store."""
    if is_local(ckpt_root):
        path = os.path.abspath(local_path_of(ckpt_root))
        os.makedirs(path, exist_ok=True)
        return path, None
    import pyarrow.fs as pafs

    opts = dict(storage_options or {})
    if ckpt_root.startswith(("s3://", "s3a://")):
        # Ray lists and re-reads what other processes wrote: no stale listing cache
        opts.update(skip_instance_cache=True, use_listings_cache=False)
    fs, path = open_fs(ckpt_root, opts)
    return path.rstrip("/"), pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _upload_dir(local_dir: str, uri: str, storage_options: dict | None) -> None:
    for folder, _, files in os.walk(local_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), local_dir)
            atomic_put_file(os.path.join(folder, name), join_uri(uri, *rel.split(os.sep)), storage_options)


def _merge_upload_dir(local_dir: str, uri: str, storage_options: dict | None) -> None:
    """Upload `local_dir` into the shared folder `uri` without removing anything there: files in
    subfolders first (written over the same names), then the top-level files, where a JSON object
    that already exists is merged key by key (e.g. model_index.json listing every part)."""
    top = sorted(f for f in os.listdir(local_dir) if os.path.isfile(os.path.join(local_dir, f)))
    for entry in sorted(os.listdir(local_dir)):
        if os.path.isdir(os.path.join(local_dir, entry)):
            _upload_dir(os.path.join(local_dir, entry), join_uri(uri, entry), storage_options)
    for name in top:
        path, target = os.path.join(local_dir, name), join_uri(uri, name)
        if name.endswith(".json"):
            with open(path) as f:
                new = json.load(f)
            try:
                old = json.loads(read_bytes(target, storage_options))
            except (FileNotFoundError, json.JSONDecodeError):
                old = None
            if isinstance(old, dict) and isinstance(new, dict):
                atomic_write_bytes(target, json.dumps({**old, **new}, indent=2, sort_keys=True).encode(),
                                   storage_options)
                continue
        atomic_put_file(path, target, storage_options)


def _download_dir(uri: str, storage_options: dict | None) -> tuple[str, bool]:
    """Local folder with the contents of `uri` (and whether it is a temp copy)."""
    if is_local(uri):
        return local_path_of(uri), False
    fs, path = open_fs(uri, storage_options)
    tmp = tempfile.mkdtemp(prefix="facefab-init-")
    fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
    return tmp, True


def load_weights(model, uri: str, storage_options: dict | None) -> None:
    """Initialise `model` from the *.safetensors of an export folder (missing keys stay fresh)."""
    from safetensors.torch import load_file

    local, temp = _download_dir(uri, storage_options)
    try:
        files = sorted(f for f in os.listdir(local) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"init_from {uri}: no .safetensors files there")
        state: dict[str, Any] = {}
        for f in files:
            state.update(load_file(os.path.join(local, f)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            log.warning("init_from %s: %d missing, %d unexpected keys", uri, len(missing), len(unexpected))
    finally:
        if temp:
            shutil.rmtree(local, ignore_errors=True)


# -- summary ----------------------------------------------------------------------------------------

def _loss_curve_png(history: list[dict[str, Any]], evals: list[dict[str, Any]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], lw=1, color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    metric = next((k for k in ("psnr", "l1") if evals and k in evals[-1]), None)
    if metric:
        ax2 = ax.twinx()
        ax2.plot([e["step"] for e in evals], [e[metric] for e in evals], "o-", color="tab:red", label=f"eval {metric}")
        ax2.set_ylabel(f"held-out {metric}", color="tab:red")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _mean_throughput(history: list[dict[str, Any]], first_step: int) -> float | None:
    # this run's steps, without the first one (warm-up, first data read)
    values = [h["samples_per_s"] for h in history if h["step"] > first_step + 1]
    return round(sum(values) / len(values), 3) if values else None


# -- the worker -------------------------------------------------------------------------------------

def _SystemLoss(system, model):  # noqa: N802 -- builds the module class lazily (torch imported in workers only)
    """nn.Module whose forward(batch) is system.loss(model, batch); `.model` is the system's model."""
    import torch

    class SystemLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, batch):
            return system.loss(self.model, batch)

    return SystemLoss()


def _say(message: str) -> None:
    """One line to the worker's stdout (Ray forwards it to the driver once; print() is patched
    by Ray Train to go to both the log and stdout)."""
    import sys

    sys.__stdout__.write(message + "\n")
    sys.__stdout__.flush()


def _peak_memory(device) -> dict[str, float]:
    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _current_rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _optimizer_state_mb(optimizer) -> float:
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed ZeRO wraps the torch optimizer
    total = 0
    for state in getattr(inner, "state", {}).values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return round(total / 2**20, 2)


def _train_loop(lc: dict[str, Any]) -> None:  # noqa: C901, PLR0912, PLR0915 -- one readable loop
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    cfg = TrainConfig(**lc["cfg"])
    system, opts, run_uri = lc["system"], lc["storage_options"], lc["run_uri"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(round(cfg.cpus_per_worker))))
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    if cfg.strategy == "deepspeed":
        import deepspeed
    base_rss_mb = _current_rss_mb()  # after the imports: what the run itself adds is peak - base

    model = system.build_model(lc["model_config"])
    checkpoint = ray.train.get_checkpoint()
    if cfg.init_from and checkpoint is None:
        load_weights(model, cfg.init_from, opts)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.5, 0.999), weight_decay=cfg.weight_decay)
    # the whole loss is one forward of the wrapped module, so DeepSpeed's and DDP's hooks see every
    # use of the parameters (e.g. the extra keypoint passes of an equivariance loss)
    step_module = _SystemLoss(system, model)
    engine = None
    if cfg.strategy == "deepspeed":
        engine, optimizer, _, _ = deepspeed.initialize(model=step_module, optimizer=optimizer, config=lc["ds_config"])
        forward = engine
    else:
        forward = ray.train.torch.prepare_model(step_module)
    module = step_module.model  # the system's model, on the device (eval, export, ddp checkpoints)

    state: dict[str, Any] = {"step": 0, "epoch": 0, "history": [], "evals": [], "runs": []}
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            if engine is not None:
                path, _ = engine.load_checkpoint(folder, tag=DS_TAG)
                if path is None:
                    raise RuntimeError(f"checkpoint {checkpoint.path} has no DeepSpeed state under {DS_TAG}/")
            else:
                module.load_state_dict(torch.load(os.path.join(folder, "model.pt"), map_location=device))
                optimizer.load_state_dict(torch.load(os.path.join(folder, "optimizer.pt"), map_location=device))
            with open(os.path.join(folder, STATE_FILE)) as f:
                state = json.load(f)
    start_step = state["step"]
    this_run = {"start_step": start_step, "end_step": start_step, "resumed": checkpoint is not None,
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "world_size": world, "wall_seconds": 0.0}
    state["runs"].append(this_run)
    if rank == 0:
        how = f"resuming from checkpoint at step {start_step}" if checkpoint is not None else "starting at step 0"
        _say(f"[facefab train] {lc['run_name']}: {how} of {cfg.max_steps} "
             f"({cfg.strategy}{'' if engine is None else ' ZeRO-' + str(lc['ds_config']['zero_optimization']['stage'])},"
             f" {world} worker(s) on {device.type})")

    val_samples: list[dict] = []
    if rank == 0 and cfg.evaluate and hasattr(system, "evaluate") and lc["val_rows"]:
        make = getattr(system, "make_eval_samples", system.make_samples)
        for row in lc["val_rows"]:
            val_samples.extend(make(row, opts))

    def evaluate(step: int) -> dict[str, float]:
        if not val_samples:
            return {}
        result = {k: float(v) for k, v in system.evaluate(module, val_samples).items()}
        state["evals"].append({"step": step, **result})
        return result

    def write_summary(step: int, status: str, memory: list[dict] | None = None) -> None:
        this_run["end_step"] = step
        this_run["wall_seconds"] = round(time.perf_counter() - started, 3)
        summary = {
            "system": cfg.system, "run_name": lc["run_name"], "stage": cfg.stage, "status": status,
            "strategy": cfg.strategy, "deepspeed_config": lc["ds_config"] if engine is not None else None,
            "world_size": world, "device": device.type, "data_root": lc["data_root"], "run_uri": run_uri,
            "max_steps": cfg.max_steps, "step": step, "start_step": start_step,
            "resumed_from_step": start_step if checkpoint is not None else None,
            "samples_per_s": _mean_throughput(state["history"], start_step),
            "loss": state["history"][-1]["loss"] if state["history"] else None,
            "eval": state["evals"][-1] if state["evals"] else None,
            "workers": memory, "train_clips": lc["num_train_rows"], "val_clips": len(lc["val_rows"]),
            # the data-parallel replicas ended with the same weights (gradients were synchronised)
            "replicas_in_sync": (len({w["param_checksum"] for w in memory}) == 1) if memory else None,
            "checkpoints": state.get("checkpoints", []),
            "export_uri": join_uri(run_uri, EXPORT_DIR) if status == "finished" else None,
            "group_export_uri": lc.get("group_uri") if status == "finished" else None,
            "runs": state["runs"], "history": state["history"], "evals": state["evals"],
            "model_config": lc["model_config"], "config": asdict(cfg),
        }
        atomic_write_bytes(join_uri(run_uri, SUMMARY_FILE),
                           json.dumps(summary, indent=2, default=str).encode(), opts)
        if state["history"] or state["evals"]:
            title = f"{lc['run_name']} (step {step})"
            atomic_write_bytes(join_uri(run_uri, CURVE_FILE), _loss_curve_png(state["history"], state["evals"], title),
                               opts)

    def save_checkpoint(step: int, metrics: dict[str, Any]) -> None:
        folder = tempfile.mkdtemp(prefix="facefab-ckpt-")
        try:
            if engine is not None:
                engine.save_checkpoint(folder, tag=DS_TAG, client_state={"step": step})
            elif rank == 0:
                torch.save(module.state_dict(), os.path.join(folder, "model.pt"))
                torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
            if rank == 0:
                metrics.update({f"eval_{k}": v for k, v in evaluate(step).items()})
                state["step"] = step
                state.setdefault("checkpoints", []).append(step)
                this_run["end_step"] = step
                with open(os.path.join(folder, STATE_FILE), "w") as f:
                    json.dump(state, f)
            has_files = bool(os.listdir(folder))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if has_files else None,
                             checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{step:08d}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if rank == 0:
            _say(f"[facefab train] checkpoint at step {step} -> {join_uri(run_uri, f'{CHECKPOINT_PREFIX}{step:08d}')}")
            write_summary(step, "running")

    if rank == 0 and checkpoint is None:
        evaluate(0)  # the starting point of the held-out curve

    step = start_step
    bar = None
    if rank == 0 and lc["progress"] and step < cfg.max_steps:
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=cfg.max_steps, desc=f"train {cfg.system}", unit="step")
        if step:
            bar.update(step)
    shard = ray.train.get_dataset_shard("train")
    last_metrics: dict[str, Any] = {}
    while step < cfg.max_steps:
        batches = 0
        tick = time.perf_counter()
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True,
                                              local_shuffle_buffer_size=cfg.shuffle_buffer or None,
                                              local_shuffle_seed=cfg.seed + 1000 * state["epoch"] + rank):
            batches += 1
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            loss, logs = forward(batch)
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
            step += 1
            keys = sorted(logs)
            values = torch.tensor([float(loss.detach()), *(float(logs[k]) for k in keys)], dtype=torch.float64)
            if dist.is_available() and dist.is_initialized() and world > 1:
                values = values.to(device)
                dist.all_reduce(values)
                values = values.cpu() / world
            now = time.perf_counter()
            seconds = now - tick
            record = {"step": step, "loss": round(float(values[0]), 6),
                      "samples_per_s": round(cfg.batch_size * world / max(seconds, 1e-9), 3),
                      "seconds": round(seconds, 4),
                      **{k: round(float(v), 6) for k, v in zip(keys, values[1:].tolist())}}
            last_metrics = {k: v for k, v in record.items() if k != "seconds"}
            if rank == 0:
                state["history"].append(record)
                if bar is not None:
                    bar.set_description(f"train {cfg.system} loss {record['loss']:.4f} "
                                        f"{record['samples_per_s']:.1f} samples/s")
                    bar.update(1)
                if cfg.log_every and (step % cfg.log_every == 0 or step == start_step + 1):
                    _say(f"[facefab train] step {step}/{cfg.max_steps} loss {record['loss']:.4f} "
                         f"{record['samples_per_s']:.2f} samples/s")
            if step % cfg.checkpoint_every == 0 or step >= cfg.max_steps:
                save_checkpoint(step, dict(last_metrics))
            if step >= cfg.max_steps:
                break
            tick = time.perf_counter()
        if batches == 0:
            raise RuntimeError(f"the training data gave worker {rank} no batch of {cfg.batch_size} samples: "
                               f"add clips or lower --batch-size / --workers")
        state["epoch"] += 1
    if bar is not None:
        bar.close()

    memory = {"rank": rank, **_peak_memory(device), "base_rss_mb": base_rss_mb,
              "optimizer_state_mb": _optimizer_state_mb(optimizer),
              "param_checksum": float(sum(p.detach().double().sum() for p in module.parameters()))}
    memory["train_rss_mb"] = round(memory["peak_rss_mb"] - base_rss_mb, 1)
    memories = [memory]
    if dist.is_available() and dist.is_initialized() and world > 1:
        memories = [None] * world
        dist.all_gather_object(memories, memory)
    if rank == 0:
        if state["evals"] and state["evals"][-1]["step"] != step:
            evaluate(step)
        export_model = module
        if any(p.dtype != torch.float32 for p in module.parameters()):
            import copy

            export_model = copy.deepcopy(module).float()
        export_model = export_model.to("cpu") if device.type != "cpu" else export_model
        out = tempfile.mkdtemp(prefix="facefab-export-")
        try:
            system.export(export_model, out)
            _upload_dir(out, join_uri(run_uri, EXPORT_DIR), opts)
            if lc.get("group_uri"):
                _merge_upload_dir(out, lc["group_uri"], opts)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        write_summary(step, "finished", memories)
        _say(f"[facefab train] done at step {step}; export -> {join_uri(run_uri, EXPORT_DIR)}"
             + (f"; group export -> {lc['group_uri']}" if lc.get("group_uri") else ""))


# -- the driver -------------------------------------------------------------------------------------

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
    group = getattr(system, "export_group", None)
    if group and group == run_name:
        raise ValueError(f"run name {run_name!r} is {cfg.system}'s export group folder; choose another --run-name")
    group_uri = join_uri(ckpt_root, group) if group else None

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from facefab.operators.runtime import init_ray

    init_ray(progress=progress)
    if not os.environ.get("RAY_ADDRESS"):
        free = ray.cluster_resources().get("CPU", 0) - cfg.workers * cfg.cpus_per_worker
        if free < cfg.data_cpus:
            raise ValueError(f"{cfg.workers} worker(s) x {cfg.cpus_per_worker} CPUs leave {free:g} of "
                             f"{ray.cluster_resources().get('CPU', 0):g} CPUs for data loading "
                             f"(needs {cfg.data_cpus}); lower --cpus-per-worker or --workers")
    storage_path, storage_fs = ray_storage(ckpt_root, opts)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "cfg": asdict(cfg), "system": system, "model_config": model_config, "ds_config": ds_config,
            "storage_options": opts, "run_uri": run_uri, "run_name": run_name, "data_root": data_root,
            "val_rows": val_rows, "num_train_rows": len(train_rows), "progress": progress,
            "group_uri": group_uri,
        },
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=storage_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
        datasets={"train": build_dataset(train_rows, system, opts, cfg)},
    )
    trainer.fit()
    return read_summary(run_uri, opts)


def read_summary(run_uri: str, storage_options: dict | None = None) -> dict[str, Any]:
    """CKPT_ROOT/<run>/summary.json, read fresh (the workers rewrote it; no cached listing/ETag)."""
    fs, path = open_fs(join_uri(run_uri, SUMMARY_FILE), storage_options)
    fs.invalidate_cache()
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def summary_line(summary: dict[str, Any]) -> str:
    ev = summary.get("eval") or {}
    extra = "".join(f", held-out {k} {v:.3f}" for k, v in ev.items() if k != "step")
    resumed = summary.get("resumed_from_step")
    how = f"resumed from step {resumed}" if resumed is not None else "from scratch"
    sps = summary.get("samples_per_s")
    return (f"train {summary['system']} ({summary['run_name']}): step {summary['step']}/{summary['max_steps']} "
            f"{how}; loss {summary.get('loss')}{extra}; "
            f"{'%.2f' % sps if sps else '?'} samples/s; export {summary.get('export_uri')}"
            + (f" (+ {summary['group_export_uri']})" if summary.get("group_export_uri") else ""))

"""The Ray Train worker: `train_loop_per_worker` runs one Trainer per worker process.

A Trainer builds the system's model, wraps it in a DeepSpeed engine (or DDP), resumes from the
checkpoint Ray Train hands it (module, ZeRO-partitioned optimizer state, trainer_state.json; the
data stream restarts from a fresh pass, sample order is not restored), trains to max_steps over its
shard of the Ray Dataset, checkpoints every checkpoint_every steps and, on rank 0, evaluates on the
held-out clips, writes summary.json and exports. A run that already reached max_steps only
re-exports.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from facefab.manifests.storage import join_uri

from .checkpoints import checkpoint_dir_name, load_weights, restore_latest_intact, save_model_state, write_trainer_state
from .config import TrainConfig
from .export import EXPORT_DIR, export_model
from .memory import current_rss_mb, optimizer_state_mb, peak_memory
from .summary import mean_throughput, save_summary
from .systems import TrainingSystem


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """TorchTrainer's worker function; `config` is what runtime.run_training passes."""
    Trainer(config).run()


class SystemLoss(torch.nn.Module):
    """forward(batch) is system.loss(model, batch): the whole loss is one forward of this module,
    so DeepSpeed's and DDP's hooks see every use of the parameters (e.g. the extra keypoint passes
    of an equivariance loss). `.model` is the system's model."""

    def __init__(self, system: TrainingSystem, model: torch.nn.Module):
        super().__init__()
        self.system = system
        self.model = model

    def forward(self, batch):
        return self.system.loss(self.model, batch)


def say(message: str, console=None) -> None:
    """One progress line for the user: onto the driver's console queue when the run has one (the
    workers' own output stays in Ray's log folder), else to the worker's stdout."""
    if console is not None:
        try:
            console.put(message, timeout=10)
            return
        except Exception:  # noqa: BLE001 - a full or gone queue must not stop training; keep the line
            pass
    sys.__stdout__.write(message + "\n")
    sys.__stdout__.flush()


class Trainer:
    """One data-parallel worker of a run."""

    def __init__(self, config: dict[str, Any]):
        self.cfg = TrainConfig(**config["cfg"])
        self.system: TrainingSystem = config["system"]
        self.model_config: dict[str, Any] = config["model_config"]
        self.ds_config: dict[str, Any] | None = config["ds_config"]
        self.console = config.get("console")  # ray.util.queue.Queue the driver prints from
        self.opts: dict | None = config["storage_options"]
        self.run_uri: str = config["run_uri"]
        self.run_name: str = config["run_name"]
        self.data_root: str = config["data_root"]
        self.val_rows: list[dict] = config["val_rows"]
        self.num_train_rows: int = config["num_train_rows"]
        self.progress: bool = config["progress"]
        self.group_uri: str | None = config["group_uri"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def run(self) -> None:
        self.setup()
        step = self.train()
        self.finish(step)

    # -- setup -------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Model, optimizer and engine; the state resumed from Ray Train's checkpoint, if any."""
        cfg = self.cfg
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(round(cfg.cpus_per_worker))))
        torch.manual_seed(cfg.seed)
        self.started = time.perf_counter()
        self.checkpoint = ray.train.get_checkpoint()
        self._build_engine()
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "history": [], "evals": [], "runs": []}
        if self.checkpoint is not None:
            self.state, self.checkpoint = restore_latest_intact(self.checkpoint, self.engine, self.module,
                                                                self.optimizer, self.device)
        self.start_step = self.state["step"]
        self.this_run = {"start_step": self.start_step, "end_step": self.start_step,
                         "resumed": self.checkpoint is not None,
                         "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "world_size": self.world, "wall_seconds": 0.0}
        self.state["runs"].append(self.this_run)
        if self.rank == 0:
            self._announce()
        self.val_samples = self._held_out_samples()

    def _build_engine(self) -> None:
        """self.module (the system's model), self.optimizer, self.engine (DeepSpeed; None for DDP)
        and self.forward (the wrapped SystemLoss)."""
        cfg = self.cfg
        if cfg.strategy == "deepspeed":
            import deepspeed
        self.base_rss_mb = current_rss_mb()  # after the imports: what the run itself adds is peak - base

        model = self.system.build_model(self.model_config)
        if cfg.init_from and self.checkpoint is None:
            load_weights(model, cfg.init_from, self.opts)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(0.5, 0.999), weight_decay=cfg.weight_decay)
        step_module = SystemLoss(self.system, model)
        self.engine = None
        if cfg.strategy == "deepspeed":
            self.engine, self.optimizer, _, _ = deepspeed.initialize(model=step_module, optimizer=self.optimizer,
                                                                     config=self.ds_config)
            self.forward = self.engine
        else:
            self.forward = ray.train.torch.prepare_model(step_module)
        self.module = step_module.model  # on the device: what eval, export and DDP checkpoints use

    def _announce(self) -> None:
        cfg = self.cfg
        how = (f"resuming from checkpoint at step {self.start_step}" if self.checkpoint is not None
               else "starting at step 0")
        zero = "" if self.engine is None else " ZeRO-" + str(self.ds_config["zero_optimization"]["stage"])
        say(f"[facefab train] {self.run_name}: {how} of {cfg.max_steps} "
            f"({cfg.strategy}{zero}, {self.world} worker(s) on {self.device.type})", self.console)

    def _held_out_samples(self) -> list[dict]:
        if self.rank != 0 or not self.cfg.evaluate:
            return []
        return [s for row in self.val_rows for s in self.system.make_eval_samples(row, self.opts)]

    # -- rank 0: evaluation and the summary ----------------------------------------------------------

    def evaluate(self, step: int) -> dict[str, float]:
        """The system's held-out metrics at `step`, recorded in the state (none without samples)."""
        if not self.val_samples:
            return {}
        result = {k: float(v) for k, v in self.system.evaluate(self.module, self.val_samples).items()}
        self.state["evals"].append({"step": step, **result})
        return result

    def write_summary(self, step: int, status: str, memory: list[dict] | None = None) -> None:
        cfg, state, finished = self.cfg, self.state, status == "finished"
        self.this_run["end_step"] = step
        self.this_run["wall_seconds"] = round(time.perf_counter() - self.started, 3)
        resumed = self.checkpoint is not None
        save_summary(self.run_uri, {
            "system": cfg.system, "run_name": self.run_name, "stage": cfg.stage, "status": status,
            "strategy": cfg.strategy, "deepspeed_config": self.ds_config if self.engine is not None else None,
            "world_size": self.world, "device": self.device.type, "data_root": self.data_root,
            "run_uri": self.run_uri, "max_steps": cfg.max_steps, "step": step, "start_step": self.start_step,
            "resumed_from_step": self.start_step if resumed else None,
            "samples_per_s": mean_throughput(state["history"], self.start_step),
            "loss": state["history"][-1]["loss"] if state["history"] else None,
            "eval": state["evals"][-1] if state["evals"] else None,
            "workers": memory, "train_clips": self.num_train_rows, "val_clips": len(self.val_rows),
            # the data-parallel replicas ended with the same weights (gradients were synchronised)
            "replicas_in_sync": (len({w["param_checksum"] for w in memory}) == 1) if memory else None,
            "checkpoints": state.get("checkpoints", []),
            "export_uri": join_uri(self.run_uri, EXPORT_DIR) if finished else None,
            "group_export_uri": self.group_uri if finished else None,
            "runs": state["runs"], "history": state["history"], "evals": state["evals"],
            "model_config": self.model_config, "config": asdict(cfg),
        }, self.opts)

    # -- checkpoints ---------------------------------------------------------------------------------

    def save_checkpoint(self, step: int, metrics: dict[str, Any]) -> None:
        """Every rank writes its part; rank 0 adds the evaluation and trainer_state.json; Ray Train
        uploads the folder as checkpoint_<step>."""
        folder = tempfile.mkdtemp(prefix="facefab-ckpt-")
        try:
            save_model_state(folder, step, self.engine, self.module, self.optimizer, self.rank)
            if self.rank == 0:
                metrics.update({f"eval_{k}": v for k, v in self.evaluate(step).items()})
                self.state["step"] = step
                self.state.setdefault("checkpoints", []).append(step)
                self.this_run["end_step"] = step
                write_trainer_state(folder, self.state)
            has_files = bool(os.listdir(folder))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if has_files else None,
                             checkpoint_dir_name=checkpoint_dir_name(step))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if self.rank == 0:
            say(f"[facefab train] checkpoint at step {step} -> {join_uri(self.run_uri, checkpoint_dir_name(step))}",
                self.console)
            self.write_summary(step, "running")

    # -- the loop ------------------------------------------------------------------------------------

    def train(self) -> int:
        """Steps up to max_steps, pass after pass over this worker's shard; returns the last step."""
        cfg = self.cfg
        if self.rank == 0 and self.checkpoint is None:
            self.evaluate(0)  # the starting point of the held-out curve
        step = self.start_step
        bar = self._progress_bar(step)
        shard = ray.train.get_dataset_shard("train")
        while step < cfg.max_steps:
            batches = 0
            tick = time.perf_counter()
            for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True,
                                                  local_shuffle_buffer_size=cfg.shuffle_buffer or None,
                                                  local_shuffle_seed=cfg.seed + 1000 * self.state["epoch"] + self.rank):
                batches += 1
                loss, logs = self._optimizer_step(batch)
                step += 1
                record = self._record(step, loss, logs, time.perf_counter() - tick)
                if self.rank == 0:
                    self._log(record, bar)
                if step % cfg.checkpoint_every == 0 or step >= cfg.max_steps:
                    self.save_checkpoint(step, {k: v for k, v in record.items() if k != "seconds"})
                if step >= cfg.max_steps:
                    break
                tick = time.perf_counter()
            if batches == 0:
                raise RuntimeError(f"the training data gave worker {self.rank} no batch of {cfg.batch_size} "
                                   f"samples: add clips or lower --batch-size / --workers")
            self.state["epoch"] += 1
        if bar is not None:
            bar.close()
        return step

    def _optimizer_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, logs = self.forward(batch)
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.optimizer.step()
        return loss, logs

    def _record(self, step: int, loss: torch.Tensor, logs: dict[str, float], seconds: float) -> dict[str, Any]:
        """The step's loss and logs averaged over the workers, and its throughput (all workers)."""
        keys = sorted(logs)
        values = torch.tensor([float(loss.detach()), *(float(logs[k]) for k in keys)], dtype=torch.float64)
        if self._distributed():
            values = values.to(self.device)
            dist.all_reduce(values)
            values = values.cpu() / self.world
        record = {"step": step, "loss": round(float(values[0]), 6),
                  "samples_per_s": round(self.cfg.batch_size * self.world / max(seconds, 1e-9), 3),
                  "seconds": round(seconds, 4),
                  **{k: round(float(v), 6) for k, v in zip(keys, values[1:].tolist())}}
        if self.rank == 0:
            self.state["history"].append(record)
        return record

    def _log(self, record: dict[str, Any], bar) -> None:
        cfg, step = self.cfg, record["step"]
        if bar is not None:
            bar.set_description(f"train {cfg.system} loss {record['loss']:.4f} {record['samples_per_s']:.1f} samples/s")
            bar.update(1)
        if cfg.log_every and (step % cfg.log_every == 0 or step == self.start_step + 1):
            say(f"[facefab train] step {step}/{cfg.max_steps} loss {record['loss']:.4f} "
                f"{record['samples_per_s']:.2f} samples/s", self.console)

    def _progress_bar(self, step: int):
        if self.rank != 0 or not self.progress or step >= self.cfg.max_steps:
            return None
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=self.cfg.max_steps, desc=f"train {self.cfg.system}", unit="step")
        if step:
            bar.update(step)
        return bar

    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and self.world > 1

    # -- the end -------------------------------------------------------------------------------------

    def finish(self, step: int) -> None:
        """Every worker's memory to rank 0, which evaluates the last step, exports and writes the
        final summary."""
        memories = self._gather_memory()
        if self.rank != 0:
            return
        if self.state["evals"] and self.state["evals"][-1]["step"] != step:
            self.evaluate(step)
        export_model(self.system, self.module, self.run_uri, self.group_uri, self.opts)
        self.write_summary(step, "finished", memories)
        say(f"[facefab train] done at step {step}; export -> {join_uri(self.run_uri, EXPORT_DIR)}"
            + (f"; group export -> {self.group_uri}" if self.group_uri else ""), self.console)

    def _gather_memory(self) -> list[dict[str, Any]]:
        memory = {"rank": self.rank, **peak_memory(self.device), "base_rss_mb": self.base_rss_mb,
                  "optimizer_state_mb": optimizer_state_mb(self.optimizer),
                  "param_checksum": float(sum(p.detach().double().sum() for p in self.module.parameters()))}
        memory["train_rss_mb"] = round(memory["peak_rss_mb"] - self.base_rss_mb, 1)
        if not self._distributed():
            return [memory]
        memories: list[Any] = [None] * self.world
        dist.all_gather_object(memories, memory)
        return memories

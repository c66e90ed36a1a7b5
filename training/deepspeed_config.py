"""The DeepSpeed config of a run: ZeRO stage (+ optimizer offload), bf16 on GPU / fp32 on CPU, and
the --deepspeed JSON merged on top."""

from __future__ import annotations

import json
import logging
from typing import Any

from facefab.manifests.storage import read_bytes

from .config import TrainConfig
from .dicts import deep_merge

log = logging.getLogger(__name__)


def deepspeed_config(cfg: TrainConfig, use_gpu: bool, storage_options: dict | None = None) -> dict[str, Any]:
    """The engine config for `cfg` (user JSON keys override; train_batch_size is derived)."""
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
        config = deep_merge(config, user)
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

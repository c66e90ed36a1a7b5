"""What a worker's memory went to: peak RSS / GPU memory and the optimizer state it holds."""

from __future__ import annotations

import resource

import psutil
import torch


def peak_memory(device) -> dict[str, float]:
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def current_rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def optimizer_state_mb(optimizer) -> float:
    inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed ZeRO wraps the torch optimizer
    total = 0
    for state in getattr(inner, "state", {}).values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return round(total / 2**20, 2)

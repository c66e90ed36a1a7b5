"""summary.json and loss_curve.png of a run: CKPT_ROOT/<run>/, rewritten by rank 0 at every
checkpoint and at the end (the driver returns summary.json: `facefab.training.runtime.read_summary`)."""

from __future__ import annotations

import io
import json
from typing import Any

from facefab.manifests.storage import atomic_write_bytes, join_uri

SUMMARY_FILE = "summary.json"
CURVE_FILE = "loss_curve.png"


def save_summary(run_uri: str, summary: dict[str, Any], storage_options: dict | None) -> None:
    """summary.json, and the loss curve once there is a point to draw."""
    atomic_write_bytes(join_uri(run_uri, SUMMARY_FILE), json.dumps(summary, indent=2, default=str).encode(),
                       storage_options)
    if summary["history"] or summary["evals"]:
        title = f"{summary['run_name']} (step {summary['step']})"
        atomic_write_bytes(join_uri(run_uri, CURVE_FILE), loss_curve_png(summary["history"], summary["evals"], title),
                           storage_options)


def loss_curve_png(history: list[dict[str, Any]], evals: list[dict[str, Any]], title: str) -> bytes:
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


def mean_throughput(history: list[dict[str, Any]], first_step: int) -> float | None:
    # this run's steps, without the first one (warm-up, first data read)
    values = [h["samples_per_s"] for h in history if h["step"] > first_step + 1]
    return round(sum(values) / len(values), 3) if values else None

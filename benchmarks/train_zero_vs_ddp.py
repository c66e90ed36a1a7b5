"""DeepSpeed ZeRO-2 vs plain DDP: the same face-vid2vid model, data and steps, one run each.

Prints, per strategy, the training throughput (samples/s over all workers, mean of the steps after
the first, data loading included) and per worker the peak RSS (also less the RSS right after the
torch / DeepSpeed imports, i.e. what model, gradients, optimizer and buffers add) and the optimizer
state it holds, then the ZeRO-2 / DDP ratios. Both runs go through `facefab.training.runtime.run_training` on the
same local Ray, each into a fresh checkpoint folder (no resume).

    python benchmarks/train_zero_vs_ddp.py                    # builds a small data root from shared/data
    python benchmarks/train_zero_vs_ddp.py --data ROOT --workers 4 --gpus-per-worker 1 --preset paper

The default model ("bench") has the paper's widths (23M parameters) at 64 px, so that optimizer
state is a visible part of a CPU worker's memory; --preset tiny / paper pick the system presets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH_MODEL = {"image_size": 64, "keypoint_scale": 0.5, "motion_block_channels": [32, 64, 128, 256],
               "feature_depth": 8, "num_kp": 10}
CLIPS = [("drive_d0", 0.0, 3.0), ("drive_d3", 0.0, 3.0), ("drive_d3", 4.0, 7.0), ("drive_d6", 0.0, 3.0)]


def shared_data() -> Path:
    candidates = [Path(os.environ["FACEFAB_SHARED_DATA"])] if os.environ.get("FACEFAB_SHARED_DATA") else []
    candidates += [REPO.parent / "shared" / "data", REPO / "shared" / "data"]
    for c in candidates:
        if (c / "videos").is_dir():
            return c
    sys.exit(f"shared media not found in {[str(c) for c in candidates]}; pass --data ROOT or set FACEFAB_SHARED_DATA")


def build_root(root: str) -> str:
    """A preprocess-like root: 128 px centred square crops (25 fps, 16 kHz audio), a clips manifest."""
    from facefab.manifests.io import ManifestWriter, new_run_id
    from facefab.manifests.storage import join_uri
    from facefab.media.io import read_audio, read_frames, write_video

    videos = shared_data() / "videos"
    rows = []
    for i, (name, start, end) in enumerate(CLIPS):
        src = str(videos / f"{name}.mp4")
        frames = read_frames(src, fps=25, start=start, end=end, size=(160, 160))[:, 16:144, 16:144]
        try:
            audio = read_audio(src, start=start, end=end)
        except Exception:  # noqa: BLE001 -- no audio track
            audio = np.zeros(int((end - start) * 16000), np.float32)
        crop = join_uri(root, "artifacts", "crops", f"{name}-{i}.mp4")
        write_video(crop, frames, 25, audio=audio, audio_rate=16000)
        rows.append({"id": f"{name}-{i}", "source_id": name, "status": "ok", "video_uri": src, "fps": 25.0,
                     "num_frames": len(frames), "crop_size": 128, "crop_uri": crop})
    with ManifestWriter(root, "clips", new_run_id()) as writer:
        writer.add(rows)
    return root


def run_one(strategy: str, args, data: str, out: str) -> tuple[dict, float]:
    from facefab.training.runtime import TrainConfig, run_training

    cfg = TrainConfig(system="facevid2vid", preset="" if args.preset == "bench" else args.preset,
                      model=BENCH_MODEL if args.preset == "bench" else {}, strategy=strategy, zero_stage=2,
                      max_steps=args.steps, checkpoint_every=args.steps, batch_size=args.batch_size,
                      workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                      cpus_per_worker=args.cpus_per_worker, evaluate=False, val_clips=0, log_every=0,
                      system_options={"pairs_per_clip": 16}, run_name=f"bench-{strategy}")
    start = time.perf_counter()
    summary = run_training(cfg, data, out, progress=False)
    return summary, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="preprocess root (default: build a small one from shared/data)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="default: 1 on a cluster/GPU, 0.5 on a machine with <= 4 cores")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=2, help="per worker")
    p.add_argument("--preset", default="bench", choices=["bench", "tiny", "paper"])
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.cpus_per_worker is None:
        args.cpus_per_worker = 0.5 if (os.cpu_count() or 1) <= 4 and not args.gpus_per_worker else 1.0

    from facefab.pipelines.engine import init_ray

    init_ray(progress=False)
    with tempfile.TemporaryDirectory(prefix="facefab-bench-") as tmp:
        data = args.data or build_root(os.path.join(tmp, "data"))
        results = {}
        for strategy in ("deepspeed", "ddp"):
            summary, wall = run_one(strategy, args, data, os.path.join(tmp, f"ckpt-{strategy}"))
            results[strategy] = {"samples_per_s": summary["samples_per_s"], "wall_s": round(wall, 1),
                                 "workers": summary["workers"], "device": summary["device"],
                                 "final_loss": summary["loss"], "replicas_in_sync": summary["replicas_in_sync"]}

    zero, ddp = results["deepspeed"], results["ddp"]
    print(f"\nface-vid2vid ({args.preset}), {args.workers} workers on {zero['device']}, "
          f"batch {args.batch_size}/worker, {args.steps} steps each")
    gpu = "peak_gpu_mb" in zero["workers"][0]
    print(f"{'':8s} {'samples/s':>9s} {'wall s':>7s}   per worker (MB): peak RSS (peak - RSS after imports) "
          f"/ optimizer state" + (" / peak GPU" if gpu else ""))
    for name, r in (("ZeRO-2", zero), ("DDP", ddp)):
        per = ", ".join(f"r{w['rank']} {w['peak_rss_mb']:.0f} ({w['train_rss_mb']:.0f}) / {w['optimizer_state_mb']:.0f}"
                        + (f" / {w['peak_gpu_mb']:.0f}" if gpu else "") for w in r["workers"])
        sync = "" if r["replicas_in_sync"] in (True, None) else "   (replicas diverged!)"
        print(f"{name:8s} {r['samples_per_s'] or float('nan'):9.2f} {r['wall_s']:7.1f}   {per}{sync}")

    def mean(r, key):
        return sum(w[key] for w in r["workers"]) / len(r["workers"])

    print(f"ratio ZeRO-2/DDP: samples/s {zero['samples_per_s'] / ddp['samples_per_s']:.2f}x, "
          f"peak RSS per worker {mean(zero, 'peak_rss_mb') / mean(ddp, 'peak_rss_mb'):.2f}x "
          f"(above the imports {mean(zero, 'train_rss_mb') / mean(ddp, 'train_rss_mb'):.2f}x), "
          f"optimizer state per worker {mean(zero, 'optimizer_state_mb') / mean(ddp, 'optimizer_state_mb'):.2f}x"
          + (f", peak GPU memory {mean(zero, 'peak_gpu_mb') / mean(ddp, 'peak_gpu_mb'):.2f}x"
             if "peak_gpu_mb" in zero["workers"][0] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

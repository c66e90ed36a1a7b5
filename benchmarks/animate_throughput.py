"""Animate-from-speech throughput: output frames/s of `facefab animate` through its Ray actor pool
against a plain single-process loop over the same jobs, for each path.

    python benchmarks/animate_throughput.py [--models weightfree,hallo,v-express,gaia] [--preset tiny]
                                            [--jobs 4] [--seconds 2] [--size 256] [--device auto]

Paths: the weight-free talking photo (CPU), and each neural system from an UNTRAINED checkpoint at
--preset ("tiny" on a CPU; "paper" on a GPU: SD1.5-size UNets, the speed of the real thing, not its
quality) exported by its training systems. Both runs see the same jobs (the shared portraits x one
speech track); model loading is excluded from the loop (setup once) and included in the pipeline's
wall time (every actor loads its own copy), so short runs understate the pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MEDIA = SHARED if (SHARED / "portraits").is_dir() else REPO / "tests" / "data"


def jobs(count: int, seconds: float, tmp: str) -> list[dict]:
    from facefab.media import read_audio, write_audio
    from facefab.pipelines.animate import animate_inputs

    speech = str(Path(tmp) / "speech.wav")
    write_audio(speech, read_audio(str(MEDIA / "audio" / "speech_hallo1.wav"), sample_rate=16000, end=seconds), 16000)
    portraits = sorted((MEDIA / "portraits").glob("*.jpg"))
    rows = []
    for i in range(count):
        (row,) = animate_inputs(reference=str(portraits[i % len(portraits)]), audio=speech)
        rows.append({**row, "id": f"{row['id']}-{i}", "out_name": f"job{i}"})
    return rows


def loop(rows: list[dict], config, out: str) -> tuple[int, float]:
    """The same stage, one row after another in this process (the model loaded once, not timed)."""
    from facefab.operators.base import RunContext
    from facefab.pipelines.animate import build_operators
    from facefab.pipelines.engine import run_local

    (op,) = build_operators(config)
    op = op.with_context(RunContext(out))
    op.ensure_setup()
    start = time.perf_counter()
    done = run_local([op], rows)
    seconds = time.perf_counter() - start
    failed = [r["error"] for r in done if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"loop: {failed[0]}")
    return sum(int(r["frames"]) for r in done), seconds


def pipeline(rows: list[dict], config, out: str) -> tuple[int, float]:
    from facefab.operators.base import RunContext
    from facefab.pipelines.animate import run_animate

    start = time.perf_counter()
    summary = run_animate(rows, config, RunContext(out), progress=False)
    seconds = time.perf_counter() - start
    if summary.run_counts.get("ok", 0) != len(rows):
        raise RuntimeError(f"pipeline: {summary.run_counts} {summary.errors[:1]}")
    from facefab.manifests import read_manifest

    return sum(int(r["frames"]) for r in read_manifest(out).to_pylist()), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="weightfree,hallo,v-express,gaia")
    parser.add_argument("--preset", default="tiny", help="preset of the untrained neural checkpoints (tiny|paper)")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of speech per job")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps of the diffusion models")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    import torch

    from facefab.operators.animate import AnimateConfig
    from facefab.pipelines.engine import init_ray
    from facefab.training.catalog import export_untrained

    init_ray(progress=False)
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    print(f"{args.jobs} jobs x {args.seconds:g} s of speech, {args.size} px output, device {device}, "
          f"neural checkpoints untrained at preset {args.preset!r}")
    print(f"{'model':<12} {'loop fps':>9} {'pipeline fps':>13} {'ratio':>6}")
    with tempfile.TemporaryDirectory(prefix="facefab-animate-bench-") as tmp:
        rows = jobs(args.jobs, args.seconds, tmp)
        for model in args.models.split(","):
            config = AnimateConfig(model=model, size=args.size, device=args.device, steps=args.steps,
                                   watermark=True)
            if model != "weightfree":
                config = dataclasses.replace(config, checkpoint=export_untrained(
                    model, str(Path(tmp) / f"{model}-{args.preset}"), args.preset))
            frames, loop_s = loop(rows, config, str(Path(tmp) / f"{model}-loop"))
            pframes, pipe_s = pipeline(rows, config, str(Path(tmp) / f"{model}-pipeline"))
            assert frames == pframes, (frames, pframes)
            print(f"{model:<12} {frames / loop_s:9.2f} {frames / pipe_s:13.2f} {loop_s / pipe_s:6.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

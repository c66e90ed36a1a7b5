"""Animate throughput: output frames/s of `facefab animate` through its Ray actor pool against a plain
single-process loop over the same jobs, for each path; from speech, or with --driving from a driving video.

    python benchmarks/animate_throughput.py [--models weightfree,hallo,v-express,gaia] [--preset tiny]
                                            [--jobs 4] [--seconds 2] [--size 256] [--device auto]
    python benchmarks/animate_throughput.py --driving [--models weightfree,face-vid2vid,follow-your-emoji,megactor,mofa-video]

With --driving it first prints the weight-free reenactment's self-reenactment quality on every shared
talking video (reference = its first frame, driving = the video): PSNR, SSIM and mean landmark
distance to the real frames, against holding the first frame still.

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


DRIVING = ("drive_d6", "drive_d10", "drive_d3", "drive_d0")  # shared talking / moving heads


def jobs(count: int, seconds: float, tmp: str, driving: bool = False) -> list[dict]:
    from facefab.media import probe, read_audio, read_frames, write_audio, write_video
    from facefab.pipelines.animate import animate_inputs

    portraits = sorted((MEDIA / "portraits").glob("*.jpg"))
    if driving:
        drivers = []
        for name in DRIVING:
            src = str(MEDIA / "videos" / f"{name}.mp4")
            info, dst = probe(src), str(Path(tmp) / f"{name}.mp4")
            audio = read_audio(src, end=seconds) if info.has_audio else None
            write_video(dst, read_frames(src, end=seconds), info.fps, audio=audio, audio_rate=16000)
            drivers.append(dst)
        pairs = [{"driving": drivers[i % len(drivers)]} for i in range(count)]
    else:
        speech = str(Path(tmp) / "speech.wav")
        write_audio(speech, read_audio(str(MEDIA / "audio" / "speech_hallo1.wav"), sample_rate=16000, end=seconds),
                    16000)
        pairs = [{"audio": speech}] * count
    rows = []
    for i, pair in enumerate(pairs):
        (row,) = animate_inputs(reference=str(portraits[i % len(portraits)]), **pair)
        rows.append({**row, "id": f"{row['id']}-{i}", "out_name": f"job{i}"})
    return rows


def self_reenactment(seconds: float) -> None:
    """The weight-free reenactment of each shared talking video from its own first frame, against the
    first frame held still (the measure the tests assert on drive_d6)."""
    import numpy as np

    from facefab.face.mesh import largest_face_landmarks
    from facefab.face.scores import image_psnr, image_ssim
    from facefab.media import read_frames
    from facefab.models.portrait.reenact import WeightFreeReenactment

    print("self-reenactment, weight-free (reference = first frame), against copying the first frame:")
    print(f"{'video':<10} {'PSNR':>6} {'copy':>6} {'SSIM':>6} {'copy':>6} {'landmarks px':>13} {'copy':>6}")
    model = WeightFreeReenactment()
    for name in DRIVING:
        real = read_frames(str(MEDIA / "videos" / f"{name}.mp4"), end=seconds)
        marks = largest_face_landmarks(real)
        plan = model.plan(marks[0], marks)
        out = np.stack([model.render(plan, t, real[0]) for t in range(len(real))])
        ts = range(1, len(real))
        measured = largest_face_landmarks(out)[1:, :, :2]

        def mean(f, a, real=real, ts=ts):
            return float(np.mean([f(a[t], real[t]) for t in ts]))

        copy = np.repeat(real[:1], len(real), axis=0)
        distance = np.nanmean(np.linalg.norm(measured - marks[1:, :, :2], axis=-1))
        copy_distance = np.nanmean(np.linalg.norm(marks[:1, :, :2] - marks[1:, :, :2], axis=-1))
        print(f"{name:<10} {mean(image_psnr, out):6.2f} {mean(image_psnr, copy):6.2f} {mean(image_ssim, out):6.3f} "
              f"{mean(image_ssim, copy):6.3f} {distance:13.2f} {copy_distance:6.2f}", flush=True)


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
    parser.add_argument("--driving", action="store_true", help="animate from driving videos (reenactment)")
    parser.add_argument("--models", default=None,
                        help="default: weightfree,hallo,v-express,gaia; with --driving weightfree,face-vid2vid,"
                             "follow-your-emoji,megactor,mofa-video")
    parser.add_argument("--preset", default="tiny", help="preset of the untrained neural checkpoints (tiny|paper)")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of speech / driving video per job")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps of the diffusion models")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    import torch

    from facefab.models.registry import get
    from facefab.operators.animate import AnimateConfig
    from facefab.operators.reenact import ReenactJobConfig
    from facefab.pipelines.engine import init_ray
    from facefab.training.catalog import export_untrained

    models = args.models or ("weightfree,face-vid2vid,follow-your-emoji,megactor,mofa-video" if args.driving
                             else "weightfree,hallo,v-express,gaia")
    if args.driving:
        self_reenactment(args.seconds)
    init_ray(progress=False)
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    what = "driving video" if args.driving else "speech"
    print(f"{args.jobs} jobs x {args.seconds:g} s of {what}, {args.size} px output, device {device}, "
          f"neural checkpoints untrained at preset {args.preset!r}")
    print(f"{'model':<12} {'loop fps':>9} {'pipeline fps':>13} {'ratio':>6}")
    with tempfile.TemporaryDirectory(prefix="facefab-animate-bench-") as tmp:
        rows = jobs(args.jobs, args.seconds, tmp, args.driving)
        for model in models.split(","):
            config_class = ReenactJobConfig if args.driving else AnimateConfig
            config = config_class(model=model, size=args.size, device=args.device, steps=args.steps, watermark=True)
            if model != "weightfree":
                trainable = get(model).trainable[0]
                config = dataclasses.replace(config, checkpoint=export_untrained(
                    trainable, str(Path(tmp) / f"{model}-{args.preset}"), args.preset))
            frames, loop_s = loop(rows, config, str(Path(tmp) / f"{model}-loop"))
            pframes, pipe_s = pipeline(rows, config, str(Path(tmp) / f"{model}-pipeline"))
            assert frames == pframes, (frames, pframes)
            print(f"{model:<12} {frames / loop_s:9.2f} {frames / pipe_s:13.2f} {loop_s / pipe_s:6.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

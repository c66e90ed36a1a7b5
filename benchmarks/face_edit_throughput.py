"""Face-editing throughput: output frames/s of `facefab makeup` and `facefab swap` through their Ray
actor pools against a plain single-process loop over the same jobs, and where the time goes.

    python benchmarks/face_edit_throughput.py [--jobs 4] [--seconds 3]
                                              [--paths makeup,swap,beautyrec,face-adapter]

Jobs: the shared talking videos (cut to --seconds) x a reference portrait (makeup: lp_s1, made up; swap:
lp_s9). The loop runs the stage row after row in this process (set-up excluded); the pipeline's wall time
includes Ray's start-up and every actor's set-up, so short runs understate it. Paths: the weight-free
makeup transfer and mesh swap, and BeautyREC / Face-Adapter on an untrained export of their tiny preset
(`training.catalog.export_untrained`): the cost of the neural path's plumbing and of a tiny net on this
machine, not of a paper-size checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MEDIA = SHARED if (SHARED / "portraits" / "lp_s1.jpg").is_file() else REPO / "tests" / "data"
VIDEOS = ("drive_d6", "drive_d10", "drive_d3", "drive_d0")


REFERENCES = {"makeup": "lp_s1.jpg", "swap": "lp_s9.jpg"}
PATHS = {"makeup": ("makeup", None), "swap": ("swap", None), "beautyrec": ("makeup", "beautyrec"),
         "face-adapter": ("swap", "face-adapter")}  # path -> (job, neural system)


def jobs(count: int, seconds: float, tmp: str, path: str) -> list[dict]:
    from facefab.media import probe, read_audio, read_frames, write_video
    from facefab.pipelines.face_edit import face_edit_inputs

    rows = []
    for i in range(count):
        name = VIDEOS[i % len(VIDEOS)]
        src, dst = str(MEDIA / "videos" / f"{name}.mp4"), str(Path(tmp) / f"{name}.mp4")
        if not Path(dst).exists():
            info = probe(src)
            audio = read_audio(src, end=seconds) if info.has_audio else None
            write_video(dst, read_frames(src, end=seconds), info.fps, audio=audio, audio_rate=16000)
        (row,) = face_edit_inputs(path, None, dst, str(MEDIA / "portraits" / REFERENCES[path]))
        rows.append({**row, "id": f"{row['id']}-{i}", "out_name": f"job{i}"})
    return rows


def loop(rows: list[dict], pipeline_module, config, out: str) -> tuple[list[dict], float]:
    from facefab.operators.base import RunContext
    from facefab.pipelines.engine import run_local

    (op,) = pipeline_module.build_operators(config)
    op = op.with_context(RunContext(out))
    op.ensure_setup()
    start = time.perf_counter()
    done = run_local([op], rows)
    seconds = time.perf_counter() - start
    failed = [r["error"] for r in done if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"loop: {failed[0]}")
    return done, seconds


def pipeline(rows: list[dict], path: str, config, out: str) -> tuple[list[dict], float]:
    from facefab.manifests import read_manifest
    from facefab.operators.base import RunContext
    from facefab.pipelines.face_edit import run_face_edit

    module = importlib.import_module(f"facefab.pipelines.{path}")
    start = time.perf_counter()
    summary = run_face_edit(path, module.build_operators(config), rows, config, RunContext(out), progress=False)
    seconds = time.perf_counter() - start
    if summary.run_counts.get("ok", 0) != len(rows):
        raise RuntimeError(f"pipeline: {summary.run_counts} {summary.errors[:1]}")
    return read_manifest(out).to_pylist(), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of each video")
    parser.add_argument("--paths", default=",".join(PATHS))
    args = parser.parse_args(argv)

    import dataclasses

    from facefab.operators.makeup import MakeupJobConfig
    from facefab.operators.swap import SwapJobConfig
    from facefab.pipelines.engine import init_ray
    from facefab.training.catalog import export_untrained

    init_ray(progress=False)
    configs = {"makeup": MakeupJobConfig(), "swap": SwapJobConfig()}
    print(f"{args.jobs} jobs x {args.seconds:g} s of the shared talking videos")
    print(f"{'path':<18} {'loop fps':>9} {'pipeline fps':>13} {'ratio':>6}   loop ms per output frame by stage")
    with tempfile.TemporaryDirectory(prefix="facefab-face-edit-bench-") as tmp:
        for path in args.paths.split(","):
            job, system = PATHS[path]
            config = configs[job]
            if system:
                folder = export_untrained(system, str(Path(tmp) / f"{system}-tiny"))
                config = dataclasses.replace(config, model=system, checkpoint=folder)
            module = importlib.import_module(f"facefab.pipelines.{job}")
            rows = jobs(args.jobs, args.seconds, tmp, job)
            done, loop_s = loop(rows, module, config, str(Path(tmp) / f"{path}-loop"))
            piped, pipe_s = pipeline(rows, job, config, str(Path(tmp) / f"{path}-pipeline"))
            frames = sum(int(r["frames"]) for r in done)
            assert frames == sum(int(r["frames"]) for r in piped), "the loop and the pipeline made different videos"
            stages: Counter = Counter()
            for r in done:
                stages.update(json.loads(r["stage_seconds"]))
            per_stage = ", ".join(f"{name} {1000 * s / frames:.1f}" for name, s in stages.most_common())
            print(f"{path if system else path + '-weightfree':<18} {frames / loop_s:9.2f} {frames / pipe_s:13.2f} {loop_s / pipe_s:6.2f}x   "
                  f"{per_stage}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

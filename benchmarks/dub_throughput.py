"""Dub throughput: output frames/s of `facefab dub` for the weight-free default and the neural
MyTalk path (a tiny random-initialised config saved to a temp folder), with the per-stage split.

    python benchmarks/dub_throughput.py [--seconds 4] [--video V] [--audio A] [--device auto] [--languages 5]

The operators run in this process (`engine.run_local`), so the numbers are the work of one row,
without Ray scheduling. The source analysis (faces, mesh, audio features) is shared by both
models: it runs once, then each model generates, encodes and is scored from the same analysed row.

Then one video into --languages languages: the whole weight-free dub (analysis, lip sync, score) of that
many new tracks (cuts of the shared speech at different offsets, a little longer each) for the same video
in one ROOT, against the same dub of one track alone: the later rows read the first's video analysis from
ROOT/cache/dub_analysis, so the ratio is below the number of languages. Measured twice: in this process,
one row after another (the work), and through `facefab dub`'s own Ray pipeline on this machine (what a
user waits for: the rows spread over the workers, plus each run's fixed cost of starting them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facefab.operators.base import RunContext
from facefab.operators.dub import (
    DubAnalyze,
    DubConfig,
    DubScore,
    LipSync,
)
from facefab.pipelines.dub import (
    dub_inputs,
    resolve_model,
)
from facefab.pipelines.engine import run_local

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
STAGES = ("audio_decode", "decode", "faces", "landmarks", "audio_features", "synthesis", "render", "encode", "score")
ANALYSIS = STAGES[:5]


def tiny_mytalk(folder: str) -> str:
    """A tiny random-initialised MyTalk checkpoint (both stages) saved under `folder`."""
    from facefab.models.mytalk import MyTalkMotion, MyTalkPipeline, MyTalkRenderer, tiny

    configs = tiny()
    MyTalkPipeline(MyTalkMotion(**configs["motion"]), MyTalkRenderer(**configs["renderer"])).save_pretrained(folder)
    return folder


def generate(analysed: dict, config: DubConfig, ctx: RunContext) -> dict:
    config = resolve_model(config)
    ops = [LipSync(config, ctx, resources=None), DubScore(config, ctx)]
    for op in ops:
        op.ensure_setup()  # model loading is not per-frame work
    (row,) = run_local(ops, [analysed], ctx)
    if row["status"] != "ok":
        raise RuntimeError(f"{config.model}: {row['error']}")
    return row


def watermark_ms_per_frame(uri: str) -> float:
    from facefab.media import read_frames
    from facefab.media.provenance import embed_watermark

    frames = read_frames(uri, end=0.4)
    start = time.perf_counter()
    embed_watermark(frames)
    return 1000 * (time.perf_counter() - start) / len(frames)


def report(name: str, row: dict, analysis: dict[str, float]) -> None:
    stages = dict(analysis)
    for stage, seconds in json.loads(row["stage_seconds"]).items():
        stages[stage] = stages.get(stage, 0.0) + seconds
    n = int(row["num_frames"])
    total = sum(stages.get(s, 0.0) for s in STAGES if s != "score")
    generation = sum(stages.get(s, 0.0) for s in ("synthesis", "render", "encode"))
    print(f"\n{name}: {n} output frames ({row['width']}x{row['height']} @ {row['fps']:g} fps)")
    print(f"  end to end (analysis + generation + encode): {n / total:6.2f} frames/s  ({total:.1f} s)")
    print(f"  generation + encode only:                    {n / generation:6.2f} frames/s  ({generation:.1f} s)")
    print("  stage split:")
    for stage in STAGES:
        if stage in stages:
            share = "" if stage == "score" else f"{100 * stages[stage] / total:5.1f} %"
            print(f"    {stage:<15} {stages[stage]:7.2f} s  {share}")
    print(f"  sync score (output / undubbed source): {row['sync_output']} / {row['sync_source']}; "
          f"watermark found: {row['watermark_found']}")


def languages(video: str, audio: str, seconds: float, count: int, tmp: str, dag: bool) -> None:
    from facefab.media import read_audio, write_audio
    from facefab.pipelines.dub import build_operators, run_dub

    tracks = []
    for i in range(count):
        path = str(Path(tmp) / f"language{i}.wav")
        write_audio(path, read_audio(audio, start=0.3 * i, end=0.3 * i + seconds * (1 + 0.03 * i)), 16000)
        tracks.append(path)
    config = DubConfig(model="weightfree")
    rows = [row for track in tracks for row in dub_inputs(video=video, audio=track)]
    local = {}
    for name, chosen in (("one", rows[:1]), ("all", rows)):
        ops = build_operators(config)
        for op in ops:
            op.ensure_setup()
        start = time.perf_counter()
        done = run_local(ops, chosen, RunContext(str(Path(tmp) / f"languages-{name}")))
        local[name] = time.perf_counter() - start
        failed = [r["error"] for r in done if r["status"] != "ok"]
        if failed:
            raise RuntimeError(failed[0])
    print(f"\none video into {count} languages (weight-free, analysis + lip sync + score; without the shared "
          f"analysis it would be {count}x):")
    print(f"  in this process, one row after another: one track {local['one']:.1f} s, {count} tracks "
          f"{local['all']:.1f} s = {local['all'] / local['one']:.2f}x the time of one")
    if not dag:
        return
    from facefab.operators.runtime import init_ray

    init_ray(progress=False)
    walls = {}
    for name, chosen in (("warm-up", rows[:1]), ("one", rows[:1]), ("all", rows)):
        start = time.perf_counter()
        summary = run_dub(chosen, config, RunContext(str(Path(tmp) / f"dag-{name}")), progress=False)
        walls[name] = time.perf_counter() - start
        if summary.run_counts.get("ok") != len(chosen):
            raise RuntimeError(f"dag {name}: {summary.errors[:1]}")
    cpus = os.cpu_count()
    print(f"  `facefab dub`'s Ray pipeline on this machine ({cpus} CPUs; Ray already started, each run starts its "
          f"worker pool): one track {walls['one']:.1f} s, {count} tracks {walls['all']:.1f} s = "
          f"{walls['all'] / walls['one']:.2f}x the time of one")
    print(f"    of the one-track run, about {walls['one'] - local['one']:.1f} s is the run's fixed cost (starting "
          f"the workers, loading the face and voice models, Ray Data's planning) beyond the track's "
          f"{local['one']:.1f} s of work")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", default=str(SHARED / "videos" / "drive_d3.mp4"))
    parser.add_argument("--audio", default=str(SHARED / "audio" / "speech_hallo1.wav"))
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of audio to dub")
    parser.add_argument("--device", default="auto", help="MyTalk device (auto: CUDA when visible)")
    parser.add_argument("--languages", type=int, default=5, help="new tracks for the same video (0: skip)")
    parser.add_argument("--no-dag", action="store_true", help="measure the languages in this process only")
    args = parser.parse_args(argv)

    config = DubConfig(max_duration=args.seconds, device=args.device)
    with tempfile.TemporaryDirectory(prefix="facefab-dub-bench-") as tmp:
        ctx = RunContext(str(Path(tmp) / "out"))
        analyze = DubAnalyze(config, ctx)
        analyze.ensure_setup()
        (analysed,) = run_local([analyze], dub_inputs(video=args.video, audio=args.audio), ctx)
        if analysed["status"] != "ok":
            print(f"analysis failed: {analysed['error']}")
            return 1
        analysis = {k: v for k, v in json.loads(analysed["stage_seconds"]).items() if k in ANALYSIS}
        analysed = {**analysed, "stage_seconds": None}
        print(f"source {args.video} + audio {args.audio} ({args.seconds:g} s); analysis: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in analysis.items()))

        weightfree = generate({**analysed, "out_name": "weightfree"}, dataclasses.replace(config, model="weightfree"), ctx)
        report(f"weightfree (fit: {weightfree['fit']}, mean run {weightfree['mean_run']} frames)", weightfree, analysis)
        try:
            checkpoint = tiny_mytalk(str(Path(tmp) / "mytalk-tiny"))
        except ImportError as e:
            print(f"\nmytalk: not available in this checkout ({e})")
        else:
            neural = generate({**analysed, "out_name": "mytalk"},
                              dataclasses.replace(config, model="mytalk", checkpoint=checkpoint), ctx)
            import torch

            device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
            report(f"mytalk (tiny config, random weights, {device})", neural, analysis)
        print(f"\nof 'encode': invisible watermark {watermark_ms_per_frame(args.video):.0f} ms/frame "
              "(provenance.embed_watermark at the source size)")
        if args.languages:
            languages(args.video, args.audio, args.seconds, args.languages, tmp, dag=not args.no_dag)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())

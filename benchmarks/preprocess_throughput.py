"""Preprocess throughput: the Ray DAG vs a plain sequential loop vs decode alone, and peak memory.

Prints, from one run on this machine:
  - frames/s and CPU ms per frame of decode alone (every input at 25 fps, full resolution),
  - the same of a sequential single-process loop running the same operators, fused the same way
    (run_local),
  - the same of the Ray Data DAG (run_pipeline), and the DAG / sequential ratio, with the DAG's CPU
    split by kind of process (stage actors, task workers, driver, Ray's own actors and daemons),
  - a per-stage table: each stage's ms per frame in the loop, as wall time (the rows' op_seconds) and
    as CPU time (every thread of the process, StageCPU), their sums, the frames/s the machine's cores
    allow at each sum, and the DAG's share of that bound,
  - peak memory (driver + all Ray workers, sampled) for the input list once and repeated 10x.

Usage: python benchmarks/preprocess_throughput.py [--inputs VIDEO...] [--repeat 1] [--memory-repeat 10]
The speed comparison uses --inputs (default: ../shared/data/videos/*.mp4); the memory check runs
the bundled samples once and --memory-repeat times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil

from facefab.media import iter_frames, probe
from facefab.operators.base import RunContext, stable_id
from facefab.pipelines.engine import PipelineRun, init_ray, limit_threads, run_local, run_pipeline
from facefab.pipelines.preprocess import PreprocessConfig, build_operators, largest_first, plan_stages

REPO = Path(__file__).resolve().parents[1]
SAMPLES = [REPO / "samples" / "talking_d6_4s.mp4", REPO / "samples" / "halfbody_sun_3s.mp4"]
SHARED = REPO.parent / "shared" / "data" / "videos"
# the speed comparison runs on the shared talking videos (~110 s of video) when they are there
DEFAULT_INPUTS = sorted(SHARED.glob("*.mp4")) or SAMPLES


RAY_MARKERS = ("ray::", "raylet", "gcs_server", "ray/")  # workers, daemons, agents (.../ray/..py)


def ray_processes():
    """This process, its children and every process of the local Ray session, each once, as
    (process, command line, start time); processes that end while being listed are left out."""
    me = psutil.Process()
    mine = {me.pid, *(c.pid for c in me.children(recursive=True))}
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmd, created = " ".join(p.info.get("cmdline") or []), p.info.get("create_time")
        if created is not None and (p.pid in mine or any(k in cmd for k in RAY_MARKERS)):
            yield p, cmd, created


class Sampler:
    """Calls `_sample()` on entry, every `interval` seconds in a thread, and on exit."""

    interval = 0.5

    def _sample(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._start, self._stop = time.time(), threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


class PeakMemory(Sampler):
    """The peak of the summed PSS of this process and every process of the Ray session.

    PSS (proportional set size) splits each shared page between the processes that map it; a
    plain RSS sum counts the shared libraries (torch, OpenCV, MediaPipe) and Ray's shared-memory
    object store once per worker, so it grows with the number of workers, not with the data."""

    interval = 0.2

    def __init__(self):
        self.peak = 0

    def _sample(self) -> None:
        total = 0
        for p, _, _ in ray_processes():
            with contextlib.suppress(psutil.Error):  # it ended while being read
                total += p.memory_full_info().pss
        self.peak = max(self.peak, total)


class ProcessCPU(Sampler):
    """CPU seconds of each kind of process while a DAG runs (the stage actors, Ray's task workers, the
    driver, Ray's own actors and daemons), from each process's own clock, sampled so processes that
    start during the run count too."""

    def __init__(self):
        self._first: dict[tuple, float] = {}
        self._last: dict[tuple, tuple[str, float]] = {}

    def _sample(self) -> None:
        me = os.getpid()
        for p, cmd, created in ray_processes():
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue  # it ended while being read
            key, used = (p.pid, created), t.user + t.system
            self._first.setdefault(key, 0.0 if created >= self._start else used)
            kind = "driver" if p.pid == me else process_kind(cmd)
            self._last[key] = (kind, used)

    def seconds(self) -> dict[str, float]:
        from collections import Counter

        spent: Counter = Counter()
        for key, (kind, used) in self._last.items():
            spent[kind] += used - self._first[key]
        return dict(spent.most_common())


def process_kind(cmdline: str) -> str:
    if "_OperatorActor" in cmdline:
        return "stage actors"
    if "ray::_Ledger" in cmdline:
        return "crash ledger"
    if cmdline.startswith("ray::") and "Agent" not in cmdline:
        # Ray Data's own actors (stats, autoscaling coordinator, ...); the rest are task workers,
        # named after the task they run or IDLE
        return "Ray Data's actors" if "Actor" in cmdline or "Tracker" in cmdline else "task workers (probe, shots)"
    return "Ray daemons (raylet, GCS, agents)"


def rows_for(videos: list[Path], repeat: int) -> list[dict]:
    # distinct ids per repetition, so resume does not collapse the repeats
    return [{"id": stable_id("bench", str(v), r), "video_uri": str(v)} for r in range(repeat) for v in videos]


def frames_of(videos: list[Path], repeat: int, fps: float = 25.0) -> int:
    return repeat * sum(int(round(probe(str(v)).duration * fps)) for v in videos)


def time_decode(videos: list[Path], repeat: int) -> tuple[float, float]:
    """(wall seconds, busy CPU seconds) of decoding every input at 25 fps."""
    start, cpu_start = time.perf_counter(), busy_seconds()
    for _ in range(repeat):
        for v in videos:
            for _chunk in iter_frames(str(v), fps=25.0):
                pass
    return time.perf_counter() - start, busy_seconds() - cpu_start


class StageCPU:
    """CPU seconds of each stage in a single-process loop, every thread of the process included.

    A stage's wall time (op_seconds) leaves out the work its libraries do in their own threads while
    it runs (decord's reader, x264's frame threads, MediaPipe's graph), so a sum of wall times
    understates the CPU the stages need. In a loop that runs one stage at a time, the process's CPU
    clock advanced during a stage is that stage's CPU, whichever of its threads spent it."""

    def __init__(self):
        from collections import Counter

        self.seconds: Counter = Counter()

    def __enter__(self):
        from facefab.operators import base

        self._base, self._apply = base, base.Operator.apply
        spent, apply = self.seconds, self._apply

        def timed_apply(op, row):
            start = time.process_time()
            try:
                return apply(op, row)
            finally:
                spent[op.name] += time.process_time() - start

        base.Operator.apply = timed_apply  # OperatorChain overrides apply: only its members are timed
        return self

    def __exit__(self, *exc):
        self._base.Operator.apply = self._apply


def stage_table(rows: list[dict], cpu: dict[str, float], frames: int, dag_fps: float) -> str:
    """Each stage's wall and CPU ms per frame in the loop, their sums, the frames/s the machine's
    cores allow at each sum, and the DAG's share of it. The CPU sum is the bound that holds: two
    cores cannot do more frames/s than 2 / (CPU seconds per frame)."""
    from collections import Counter

    wall: Counter = Counter()
    for row in rows:
        seconds = row.get("op_seconds") or {}
        wall.update(json.loads(seconds) if isinstance(seconds, str) else dict(seconds))
    cores = os.cpu_count() or 1
    lines = [f"  {'stage':<12} {'wall ms/frame':>14} {'CPU ms/frame':>13}"]
    lines += [f"  {stage:<12} {1000 * sec / frames:14.1f} {1000 * cpu.get(stage, 0.0) / frames:13.1f}"
              for stage, sec in wall.most_common()]
    wall_ms, cpu_ms = 1000 * sum(wall.values()) / frames, 1000 * sum(cpu.values()) / frames
    lines.append(f"  {'sum':<12} {wall_ms:14.1f} {cpu_ms:13.1f}")
    for what, ms in (("wall", wall_ms), ("CPU", cpu_ms)):
        bound = cores * 1000 / ms
        lines.append(f"  at the {what} sum {cores} cores allow {bound:.1f} frames/s; "
                     f"the DAG's {dag_fps:.1f} frames/s is {dag_fps / bound:.0%} of that")
    return "\n".join(lines)


def busy_seconds() -> float:
    """CPU seconds spent by every process of the machine (user + system), so far."""
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0)


def time_sequential(videos: list[Path], repeat: int, workdir: str, threads: int | None = None
                    ) -> tuple[float, float, list[dict], dict[str, float]]:
    """(wall seconds, busy CPU seconds, rows, CPU seconds per stage) of the plain loop; the CPU
    includes the libraries' own threads. threads=1 caps OpenCV/torch/codec pools the way the DAG's
    workers are capped."""
    if threads:
        limit_threads(threads)
    # the same plan as the DAG (per-track stages fused in one chain), so a clip's frames and its
    # crops are decoded or kept once, as in each DAG worker
    config = PreprocessConfig()
    ops = plan_stages(build_operators(config), config)
    ctx = RunContext(os.path.join(workdir, f"sequential{threads or ''}"))
    with StageCPU() as stage_cpu:
        start, cpu_start = time.perf_counter(), busy_seconds()
        rows = run_local(ops, rows_for(videos, repeat), ctx)
        elapsed, cpu = time.perf_counter() - start, busy_seconds() - cpu_start
    bad = [r for r in rows if r["status"] == "failed"]
    if bad:
        raise SystemExit(f"sequential loop failed rows: {[r['error'] for r in bad]}")
    return elapsed, cpu, rows, dict(stage_cpu.seconds)


def time_dag(videos: list[Path], repeat: int, out: str, fuse: bool = True,
             memory: bool = False) -> tuple[float, int, float, dict[str, float]]:
    """(wall seconds, peak memory bytes or 0, busy CPU seconds of the machine, CPU seconds by kind of
    process) of one DAG run.

    memory=True samples the PSS of every process while it runs. Only the memory runs do: reading
    PSS walks each process's page tables, which on 2 cores took a third of the DAG's speed."""
    config = PreprocessConfig(fuse=fuse)
    run = PipelineRun("bench", "clips", RunContext(out), progress=False,
                      order=largest_first(None) if config.largest_first else None)
    with PeakMemory() if memory else contextlib.nullcontext() as mem, ProcessCPU() as by_process:
        start, cpu_start = time.perf_counter(), busy_seconds()
        summary = run_pipeline(run, plan_stages(build_operators(config), config), rows_for(videos, repeat))
        elapsed, cpu = time.perf_counter() - start, busy_seconds() - cpu_start
    if summary.run_counts.get("failed"):
        raise SystemExit(f"DAG failed rows: {summary.errors}")
    return elapsed, mem.peak if memory else 0, cpu, by_process.seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", type=Path, default=DEFAULT_INPUTS)
    parser.add_argument("--repeat", type=int, default=1, help="input list repeats for the speed comparison")
    parser.add_argument("--memory-repeat", type=int, default=10, help="repeats for the flat-memory check")
    parser.add_argument("--memory-only", action="store_true", help="only the flat-memory check")
    args = parser.parse_args()
    videos = args.inputs
    n = frames_of(videos, args.repeat)
    print(f"inputs: {[v.name for v in videos]} x{args.repeat} = {n} frames at 25 fps; {os.cpu_count()} CPUs")
    init_ray(progress=False)
    with tempfile.TemporaryDirectory() as work:
        if not args.memory_only:
            speed(videos, args.repeat, n, work)
        _, peak_small, _, _ = time_dag(SAMPLES, 1, os.path.join(work, "mem1"), memory=True)
        _, peak_big, _, _ = time_dag(SAMPLES, args.memory_repeat, os.path.join(work, "mem10"), memory=True)
        print(f"peak memory (driver + Ray workers), samples x1: {peak_small / 2**30:.2f} GiB, "
              f"x{args.memory_repeat}: {peak_big / 2**30:.2f} GiB (ratio {peak_big / peak_small:.2f})")


def speed(videos: list[Path], repeat: int, n: int, work: str) -> None:
    """Decode alone, the loops, the DAG (by process, against the per-stage bound), the unfused DAG."""
    decode, decode_cpu = time_decode(videos, repeat)
    print(f"decode alone:      {n / decode:7.1f} frames/s   {1000 * decode_cpu / n:6.1f} CPU ms/frame")
    seq, seq_cpu, seq_rows, seq_stage_cpu = time_sequential(videos, repeat, work)
    print(f"sequential loop:   {n / seq:7.1f} frames/s   {1000 * seq_cpu / n:6.1f} CPU ms/frame   (library "
          f"default threads; {seq_cpu / seq:.2f} cores busy on average)")
    seq1, seq1_cpu, _, _ = time_sequential(videos, repeat, work, threads=1)
    print(f"sequential, 1 thread: {n / seq1:4.1f} frames/s   (OpenCV/torch/codecs capped at one thread, like "
          f"each DAG worker; {seq1_cpu / seq1:.2f} cores busy: decord decodes in a thread of its own)")
    # warm the Ray workers' imports once so both DAG timings measure steady state
    time_dag(videos[:1], 1, os.path.join(work, "warm"))
    dag, _, dag_cpu, dag_processes = time_dag(videos, repeat, os.path.join(work, "dag"))
    print(f"Ray DAG:           {n / dag:7.1f} frames/s   {1000 * dag_cpu / n:6.1f} CPU ms/frame   "
          f"DAG/sequential = {seq / dag:.2f}x, "
          f"DAG/sequential 1 thread = {seq1 / dag:.2f}x ({dag_cpu / dag:.2f} cores busy; per-track stages "
          "fused, one chain per worker: the default)")
    rest = dag_cpu - sum(dag_processes.values())
    print("  the DAG's CPU ms/frame by process: " + ", ".join(
        f"{kind} {1000 * sec / n:.1f}" for kind, sec in [*dag_processes.items(), ("other processes", rest)]))
    # Doing the same CPU work, no scheduler can beat (cores) / (cores the loop already keeps busy).
    bound = (os.cpu_count() or 1) * seq / seq_cpu
    print(f"  bound for the same work on {os.cpu_count()} cores: {bound:.2f}x over the default loop "
          f"(it already keeps {seq_cpu / seq:.2f} cores busy); the DAG reaches {seq / dag / bound:.0%} of it, "
          f"doing {dag_cpu / seq_cpu:.2f}x the loop's CPU seconds")
    print("per stage, measured in the sequential loop:")
    print(stage_table(seq_rows, seq_stage_cpu, n, n / dag))
    staged, _, staged_cpu, _ = time_dag(videos, repeat, os.path.join(work, "staged"), fuse=False)
    print(f"Ray DAG, unfused:  {n / staged:7.1f} frames/s   DAG/sequential = {seq / staged:.2f}x "
          f"({staged_cpu / staged:.2f} cores busy; one actor pool per stage, for comparison)")


if __name__ == "__main__":
    main()

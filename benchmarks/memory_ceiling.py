"""Peak memory of the two inputs that used to grow without bound: an 8 s 4K clip through
`facefab preprocess` and 10 minutes of new speech through `facefab dub`.

Each command runs as users run it (the CLI, Ray workers and all) while the summed PSS of the
command and every Ray process is sampled (benchmarks/preprocess_throughput.py's PeakMemory).
Prints the peak of each and the ceiling it is held to (4 GiB, issue "Reliability under faults").
Run it on an otherwise idle machine: every Ray process on the machine is counted.

Usage: python benchmarks/memory_ceiling.py [--seconds 8] [--dub-minutes 10] [--dub-source-minutes 10]
       [--only preprocess|dub] [--keep DIR]
Inputs are made from the bundled test media (tests/data), so nothing beside the clone is needed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facefab.media import iter_frames, probe, read_audio, read_frames, resize_frames, write_audio, write_video

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess_throughput import PeakMemory  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
CEILING = 4 << 30


def make_4k_clip(path: Path, seconds: float) -> None:
    """`seconds` of a bundled talking video, upscaled to 3840x2160 (loops the source if short)."""
    source = DATA / "videos" / "drive_d6.mp4"
    fps = probe(str(source)).fps
    wanted = int(round(seconds * fps))

    def frames():
        done = 0
        while done < wanted:
            for chunk in iter_frames(str(source), chunk=16):
                for frame in resize_frames(chunk, (2160, 2160)):
                    if done == wanted:
                        return
                    canvas = np.zeros((2160, 3840, 3), np.uint8)
                    canvas[:, 840:3000] = frame
                    done += 1
                    yield canvas

    write_video(str(path), frames(), fps, crf=23)


def make_long_source(path: Path, minutes: float) -> None:
    """drive_d3 (10 s, 480x480, with its own speech) looped to `minutes`, video and audio."""
    source = str(DATA / "videos" / "drive_d3.mp4")
    frames, fps = read_frames(source), probe(source).fps
    wanted = int(round(minutes * 60 * fps))
    own = read_audio(source)
    reps = int(np.ceil(wanted / len(frames)))
    write_video(str(path), (frames[i % len(frames)] for i in range(wanted)), fps,
                audio=np.tile(own, reps)[: int(minutes * 60 * 16000)], crf=23)


def make_long_speech(path: Path, minutes: float) -> None:
    speech = read_audio(str(DATA / "audio" / "speech_eng.wav"))
    reps = int(np.ceil(minutes * 60 * 16000 / len(speech)))
    write_audio(str(path), np.tile(speech, reps)[: int(minutes * 60 * 16000)], 16000)


def peak_of(command: list[str]) -> tuple[float, float, int]:
    """(peak GiB, wall seconds, exit code) of a CLI command."""
    start = time.perf_counter()
    with PeakMemory() as peak:
        rc = subprocess.run(command, cwd=REPO).returncode
    return peak.peak / (1 << 30), time.perf_counter() - start, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="length of the 4K clip")
    ap.add_argument("--dub-minutes", type=float, default=10.0, help="minutes of new speech to dub")
    ap.add_argument("--dub-source-minutes", type=float, default=0.0,
                    help="loop the 10 s source video to this length (0: dub the 10 s clip itself)")
    ap.add_argument("--keep", help="work in this folder (kept) instead of a temporary one")
    ap.add_argument("--only", choices=("preprocess", "dub"), help="run only this command")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="facefab-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "facefab.jobs.cli"]

    if args.only != "dub":
        preprocess_4k(cli, work, args.seconds)
    if args.only != "preprocess":
        dub_long(cli, work, args.dub_minutes, args.dub_source_minutes)


def preprocess_4k(cli: list[str], work: Path, seconds: float) -> None:
    clip = work / "clip_4k.mp4"
    if not clip.exists():
        make_4k_clip(clip, seconds)
    gib, wall, rc = peak_of([*cli, "preprocess", str(clip), "--out", str(work / "pre"), "--no-resume"])
    print(f"preprocess {seconds:g} s 4K clip: peak {gib:.2f} GiB in {wall:.0f} s (exit {rc}); "
          f"ceiling {CEILING / (1 << 30):.0f} GiB: {'ok' if gib * (1 << 30) < CEILING and rc == 0 else 'OVER'}")



def dub_long(cli: list[str], work: Path, minutes: float, source_minutes: float) -> None:
    speech = work / f"speech_{minutes:g}min.wav"
    if not speech.exists():
        make_long_speech(speech, minutes)
    video = DATA / "videos" / "drive_d3.mp4"
    if source_minutes:
        video = work / f"source_{source_minutes:g}min.mp4"
        if not video.exists():
            make_long_source(video, source_minutes)
    gib, wall, rc = peak_of([*cli, "dub", "--video", str(video), "--audio", str(speech),
                             "--out", str(work / f"dub{minutes:g}_{video.stem}"), "--no-resume"])
    print(f"dub {minutes:g} min of speech on {probe(str(video)).duration:.0f} s of video: peak {gib:.2f} GiB in {wall:.0f} s (exit {rc}); "
          f"ceiling {CEILING / (1 << 30):.0f} GiB: {'ok' if gib * (1 << 30) < CEILING and rc == 0 else 'OVER'}")


if __name__ == "__main__":
    main()

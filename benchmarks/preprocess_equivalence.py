"""How far the fast preprocess defaults move the landmarks from per-frame detection and meshing.

The `faces` stage detects on every `detect_every`th frame (default 5) and the `landmarks` stage
follows the face with the mesh's own region-of-interest tracking (`track_roi`). This script runs
probe -> shots -> faces -> landmarks on the given videos twice, with those defaults and with
detection and a static-mode mesh on every frame (the earlier behaviour), and prints per video:
statuses, the face tracks of each run, and for the frames both runs found, the landmark
difference in % of the inter-ocular distance (median, 95th percentile, max) and in pixels.

Usage: python benchmarks/preprocess_equivalence.py [--inputs VIDEO...]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from facefab.media.arrays import unpack_arrays
from facefab.operators.base import RunContext, stable_id
from facefab.pipelines.engine import run_local
from facefab.pipelines.preprocess import PreprocessConfig, build_operators

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
STAGES = ["probe", "shots", "faces", "landmarks"]
EYE_CORNERS = (33, 263)  # outer eye corners of the mesh


def tracks(videos: list[Path], fast: bool) -> list[dict]:
    config = PreprocessConfig(operators=STAGES)
    if not fast:
        config.faces.detect_every, config.landmarks.track_roi = 1, False
    rows = [{"id": stable_id("equivalence", str(v)), "video_uri": str(v)} for v in videos]
    with tempfile.TemporaryDirectory() as out:
        return run_local(build_operators(config), rows, RunContext(out))


def landmark_errors(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
    """(% of inter-ocular distance, pixels) per landmark of the frames both rows found."""
    ta, tb = unpack_arrays(a["_track"])["frame_index"], unpack_arrays(b["_track"])["frame_index"]
    la, lb = unpack_arrays(a["_landmarks"]), unpack_arrays(b["_landmarks"])
    common, ia, ib = np.intersect1d(ta, tb, return_indices=True)
    both = la["valid"][ia] & lb["valid"][ib]
    pa, pb = la["landmarks"][ia][both][..., :2], lb["landmarks"][ib][both][..., :2]
    pixels = np.linalg.norm(pa - pb, axis=-1)
    iod = np.linalg.norm(pb[:, EYE_CORNERS[0]] - pb[:, EYE_CORNERS[1]], axis=-1)
    return 100 * pixels / iod[:, None], pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", type=Path, default=sorted(SHARED.glob("*.mp4")))
    videos = parser.parse_args().inputs
    fast, full = tracks(videos, fast=True), tracks(videos, fast=False)
    print(f"statuses: fast {dict(Counter(r['status'] for r in fast))}, "
          f"per-frame {dict(Counter(r['status'] for r in full))}")
    by_id = {r["id"]: r for r in full if r["status"] == "ok"}
    all_pct, all_px = [], []
    for video in videos:
        mine = [r for r in fast if r["video_uri"] == str(video) and r["status"] == "ok"]
        theirs = [r for r in full if r["video_uri"] == str(video) and r["status"] == "ok"]
        pcts, pxs = [], []
        for row in mine:
            if row["id"] in by_id:
                pct, px = landmark_errors(row, by_id[row["id"]])
                pcts.append(pct.ravel())
                pxs.append(px.ravel())
        pct, px = np.concatenate(pcts or [np.zeros(0)]), np.concatenate(pxs or [np.zeros(0)])
        all_pct.append(pct)
        all_px.append(px)
        line = f"{video.name:18} tracks fast {len(mine)} / per-frame {len(theirs)}, matched {len(pcts)}"
        if len(pct):
            line += (f"; landmark difference % IOD median {np.median(pct):.2f} p95 {np.percentile(pct, 95):.2f} "
                     f"max {pct.max():.1f}; pixels median {np.median(px):.2f} p95 {np.percentile(px, 95):.2f}")
        print(line)
    pct, px = np.concatenate(all_pct), np.concatenate(all_px)
    print(f"all: landmark difference % IOD median {np.median(pct):.2f}, p95 {np.percentile(pct, 95):.2f}; "
          f"pixels median {np.median(px):.2f}, p95 {np.percentile(px, 95):.2f}")


if __name__ == "__main__":
    main()

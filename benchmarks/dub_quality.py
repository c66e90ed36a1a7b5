"""Dub quality against real footage: dub video A with B's own speech and compare the output's mouth
with B's real mouth over the same seconds (the only ground truth for "does the mouth follow the
sounds" that needs no human), plus the numbers a viewer's complaints map to.

    python benchmarks/dub_quality.py [--pairs d10:d6,d6:d10,...] [--seconds 12] [--model weightfree]

Per pair (A video : B speech source, shared media under ../shared/data/videos):
- opening r / width r: Pearson r of the output's inner-lip opening and mouth-corner width (face
  mesh on the written frames, divided by the eye-corner distance) against B's over the same
  seconds (B resampled to A's frame times); the undubbed A over the same frames for reference.
- sync: the DubScore sync score (max-lag r of the output's opening and the new audio's envelope).
- flicker: mean absolute frame-to-frame change inside the lower-face box, output / retimed source.
  A mouth that speaks where the source's barely moved changes more from frame to frame by rights,
  so also:
- open step vs real: mean frame-to-frame change of the output's mouth opening / that of B's real
  mouth saying the same speech (eye-corner units): above 1, the dub moves the mouth faster than
  a real speaker did.
- PSNR outside the lower face (output vs retimed source: what the dub must not touch).
- watermark cost: whole-frame PSNR of a CRF 18 encode of the first 100 output frames, without the
  mark minus with it (as the dub would write them).
The dub is written losslessly (--crf 0), so the encoder's loss is counted neither against the dub
(PSNR outside) nor twice in the watermark's cost.
Only B = drive_d6 and drive_d10 carry speech in sync with their lips (see the shared README).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from facefab.face.mesh import largest_face_landmarks
from facefab.face.scores import finite_pearson, image_psnr
from facefab.media import probe, read_audio, read_frames, write_audio, write_video
from facefab.media.arrays import unpack_arrays
from facefab.media.provenance import embed_watermark
from facefab.models.lipsync.weightfree import LOWER_FACE, WeightFreeConfig
from facefab.operators.base import RunContext
from facefab.operators.dub import DubConfig
from facefab.pipelines.dub import build_operators, dub_inputs
from facefab.pipelines.engine import run_local

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
DEFAULT_PAIRS = "d10:d6,d6:d10,d3:d6,d14:d10,talk_yongen:d6,talk_sun:d10"
EYE_CORNERS = (33, 263)


def _video(name: str) -> str:
    return str(SHARED / f"{name if name.startswith('talk_') else 'drive_' + name}.mp4")


def mouth_series(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(opening, width) per frame of the largest face, in eye-corner distances; NaN without a face."""
    xy = largest_face_landmarks(frames)[..., :2].astype(np.float64)
    eyes = np.linalg.norm(xy[:, EYE_CORNERS[0]] - xy[:, EYE_CORNERS[1]], axis=-1)
    return (np.linalg.norm(xy[:, 13] - xy[:, 14], axis=-1) / eyes,
            np.linalg.norm(xy[:, 61] - xy[:, 291], axis=-1) / eyes)


def resample(series: np.ndarray, fps_from: float, n: int, fps_to: float) -> np.ndarray:
    t = np.arange(n) / fps_to
    src = np.arange(len(series)) / fps_from
    ok = np.isfinite(series)
    return np.where(t <= src[-1], np.interp(t, src[ok], series[ok]), np.nan)


def lower_face_masks(landmarks: np.ndarray, shape: tuple[int, int], grow: float = 1.3) -> np.ndarray:
    masks = np.zeros((len(landmarks), *shape), bool)
    for i, pts in enumerate(landmarks):
        if not np.isfinite(pts).all():
            continue
        poly = pts[LOWER_FACE, :2]
        poly = poly.mean(axis=0) + (poly - poly.mean(axis=0)) * grow
        m = np.zeros(shape, np.uint8)
        cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 1)
        masks[i] = m.astype(bool)
    return masks


def flicker(frames: np.ndarray, masks: np.ndarray) -> float:
    """Mean absolute frame-to-frame change inside the lower-face box (union of both frames' masks)."""
    changes = []
    for t in range(1, len(frames)):
        m = masks[t] | masks[t - 1]
        if m.any():
            ys, xs = np.nonzero(m)
            box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
            changes.append(np.abs(frames[t][box].astype(np.int16) - frames[t - 1][box]).mean())
    return float(np.mean(changes))


def step(series: np.ndarray) -> float:
    """Mean absolute frame-to-frame change of a mouth series (NaN steps skipped)."""
    return float(np.nanmean(np.abs(np.diff(series))))


def watermark_cost(frames: np.ndarray, fps: float, work: Path) -> float:
    plain, marked = str(work / "plain.mp4"), str(work / "marked.mp4")
    write_video(plain, frames, fps)
    write_video(marked, embed_watermark(frames), fps)
    return image_psnr(read_frames(plain), frames) - image_psnr(read_frames(marked), frames)


def evaluate(a: str, b: str, seconds: float, config: DubConfig, work: Path) -> dict:
    video_b = _video(b)
    speech = str(work / f"{b}_speech.wav")
    write_audio(speech, read_audio(video_b, sample_rate=16000, end=seconds), 16000)
    (row,) = run_local(build_operators(dataclasses.replace(config, max_duration=seconds)),
                       dub_inputs(video=_video(a), audio=speech), RunContext(str(work / f"{a}_{b}")))
    if row["status"] != "ok":
        return {"pair": f"{a}<-{b}", "error": row["error"]}
    fps = float(row["fps"])
    out = read_frames(row["out_uri"])
    d = unpack_arrays(row["_dub"])
    source = read_frames(_video(a), end=(len(d["valid"]) + 0.5) / fps)[: len(d["valid"])][d["index"]]
    n = min(len(out), len(source))
    out, source = out[:n], source[:n]
    real_open, real_width = mouth_series(read_frames(video_b, end=seconds))
    b_fps = probe(video_b).fps
    real_open, real_width = resample(real_open, b_fps, n, fps), resample(real_width, b_fps, n, fps)
    out_open, out_width = mouth_series(out)
    src_open, src_width = mouth_series(source)
    masks = lower_face_masks(d["landmarks"][d["index"][:n]], out.shape[1:3])
    outside = ~masks
    return {
        "pair": f"{a}<-{b}", "fit": row.get("fit") or row.get("model"), "frames": n,
        "opening_r": finite_pearson(out_open, real_open), "width_r": finite_pearson(out_width, real_width),
        "undubbed_opening_r": finite_pearson(src_open, real_open),
        "undubbed_width_r": finite_pearson(src_width, real_width),
        "opening_std_ratio": float(np.nanstd(out_open) / max(np.nanstd(src_open), 1e-9)),
        "sync": row.get("sync_output"), "sync_undubbed": row.get("sync_source"),
        "flicker_ratio": flicker(out, masks) / max(flicker(source, masks), 1e-9),
        "open_step_vs_real": step(out_open) / max(step(real_open), 1e-9),
        "psnr_outside": image_psnr(out, source, outside),
        "watermark_cost_db": watermark_cost(out[:100], fps, work),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="A:B pairs: dub video A with B's own speech")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--crf", type=int, default=0, help="the dub's own encode (0: lossless)")
    parser.add_argument("--model", default="weightfree")
    parser.add_argument("--checkpoint")
    parser.add_argument("--weightfree", default="", help="weight-free settings to try, e.g. pose_weight=1,jump_cost=1")
    args = parser.parse_args(argv)
    settings = {k: type(getattr(WeightFreeConfig(), k))(v) for k, v in
                (item.split("=") for item in args.weightfree.split(",") if item)}
    config = DubConfig(model=args.model, checkpoint=args.checkpoint, watermark=False, crf=args.crf,
                       weightfree=WeightFreeConfig(**settings))
    columns = ("opening_r", "width_r", "undubbed_opening_r", "undubbed_width_r", "opening_std_ratio", "sync",
               "sync_undubbed", "flicker_ratio", "open_step_vs_real", "psnr_outside", "watermark_cost_db")
    with tempfile.TemporaryDirectory(prefix="facefab-dub-quality-") as tmp:
        print("pair            fit       " + " ".join(f"{c:>10.10}" for c in columns))
        for pair in args.pairs.split(","):
            a, b = pair.split(":")
            result = evaluate(a, b, args.seconds, config, Path(tmp))
            if "error" in result:
                print(f"{result['pair']:<15} failed: {result['error']}")
                continue
            values = " ".join(f"{result[c]:>10.3f}" if isinstance(result[c], float) else f"{str(result[c]):>10}"
                              for c in columns)
            print(f"{result['pair']:<15} {str(result['fit']):<9} {values}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

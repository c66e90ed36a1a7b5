"""Shot detection and clipping: cut a video at shot boundaries, then split shots into clips.

Content-based cut detection in the manner of PySceneDetect's ContentDetector: frames are compared
in HSV at low resolution; a cut is where the mean absolute HSV change from the previous frame
exceeds `threshold` and also stands out against the recent changes (so fast motion inside a shot,
which raises every delta, does not read as a cut). Shots longer than `max_clip` are split into
equal parts no longer than `max_clip`; pieces shorter than `min_clip` are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facefab.media import iter_frames, probe

from .base import Filtered, Operator, Resources, register_stage, stable_id

ANALYSIS_WIDTH = 96


def frame_deltas(frames_hsv: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """Mean absolute HSV change of each frame from the one before (first frame: 0 or vs `previous`)."""
    as_int = frames_hsv.astype(np.int16)
    prev = np.concatenate([as_int[:1] if previous is None else previous.astype(np.int16)[None], as_int[:-1]])
    diff = np.abs(as_int - prev)
    hue = np.minimum(diff[..., 0], 180 - diff[..., 0])  # hue is circular in OpenCV's 0..179
    return (hue.mean(axis=(1, 2)) * (255 / 90) + diff[..., 1].mean(axis=(1, 2)) + diff[..., 2].mean(axis=(1, 2))) / 3


def detect_cuts(deltas: np.ndarray, threshold: float = 27.0, min_shot_frames: int = 15,
                context: int = 12, ratio: float = 2.0) -> list[int]:
    """Frame indices where a new shot starts (0 excluded)."""
    cuts: list[int] = []
    last = 0
    for i in range(1, len(deltas)):
        recent = deltas[max(1, i - context):i]
        baseline = float(np.median(recent)) if len(recent) else 0.0
        if deltas[i] >= threshold and deltas[i] >= ratio * baseline and i - last >= min_shot_frames:
            cuts.append(i)
            last = i
    return cuts


def split_shot(start: int, end: int, fps: float, max_clip: float, min_clip: float) -> list[tuple[int, int]]:
    """Split frames [start, end) into near-equal clips of at most max_clip seconds."""
    n = end - start
    max_frames = max(1, int(round(max_clip * fps)))
    parts = max(1, int(np.ceil(n / max_frames)))
    bounds = np.linspace(start, end, parts + 1).round().astype(int)
    min_frames = int(round(min_clip * fps))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= min_frames]


@register_stage
class ShotClips(Operator):
    name = "shots"
    version = "1"
    inputs = ("video_uri", "fps", "duration")
    outputs = ("clip_index", "start", "end", "num_frames", "shot_index")
    fan_out = True
    default_resources = Resources(num_cpus=0.5)

    @dataclass
    class Config:
        threshold: float = 27.0  # mean HSV change (0-255) that marks a cut
        min_shot: float = 0.6  # seconds; no cut closer than this to the previous one
        max_clip: float = 10.0  # seconds
        min_clip: float = 1.0  # seconds

    def shot_boundaries(self, uri: str, fps: float, width: int, height: int) -> tuple[list[int], int]:
        deltas, previous = [], None
        size = (ANALYSIS_WIDTH, max(2, int(round(height * ANALYSIS_WIDTH / width))))
        # decoded straight to the analysis size (the scaler runs with the colour conversion)
        for chunk in iter_frames(uri, fps=fps, size=size, chunk=128, storage_options=self.ctx.storage_options):
            hsv = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2HSV) for f in chunk])
            deltas.append(frame_deltas(hsv, previous))
            previous = hsv[-1]
        all_deltas = np.concatenate(deltas) if deltas else np.zeros(0)
        cuts = detect_cuts(all_deltas, self.config.threshold, int(round(self.config.min_shot * fps)))
        return cuts, len(all_deltas)

    def process_row(self, row):
        fps = float(row["fps"])
        width, height = row.get("width"), row.get("height")
        if not (width and height):
            info = probe(row["video_uri"], self.ctx.storage_options)
            width, height = info.width, info.height
        cuts, total = self.shot_boundaries(row["video_uri"], fps, int(width), int(height))
        bounds = [0, *cuts, total]
        clips = []
        for shot_index, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            for start, end in split_shot(a, b, fps, self.config.max_clip, self.config.min_clip):
                clips.append((shot_index, start, end))
        if not clips:
            raise Filtered(f"no shot of at least {self.config.min_clip} s in {total / fps:.2f} s of video")
        return [
            {"id": stable_id(row["id"], start, end), "clip_index": i, "shot_index": shot,
             "start": start / fps, "end": end / fps, "num_frames": end - start}
            for i, (shot, start, end) in enumerate(clips)
        ]

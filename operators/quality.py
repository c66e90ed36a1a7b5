"""The `quality` and `filter` stages. `QualityScores` computes every score of a track once and stores
it (definitions in `facefab.face.scores`); `QualityFilter` only compares the stored columns with its
Config and marks rows `filtered` with every failed reason, so thresholds change without recomputing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from facefab.audio.features import frame_rms, frame_voice_activity, load_vad
from facefab.face.parsing import mouth_open_ratio
from facefab.face.scores import (
    _finite_or_none,
    av_sync_score,
    face_size_ratio,
    landmark_jitter,
    laplacian_sharpness,
    pose_extremity,
)
from facefab.media import probe
from facefab.media.arrays import load_npz, unpack_arrays

from .base import Filtered, Operator, Resources, register_stage
from .track_row import clip_audio, read_crop, video_frame_count


@register_stage
class QualityScores(Operator):
    """Per-track quality scores (see module docstring); nothing is thresholded here."""

    name = "quality"
    version = "1"
    inputs = ("video_uri", "crop_uri", "crop_size", "fps", "_track", "_landmarks", "_align", "_pose")
    outputs = ("face_size", "blur", "pose_extremity", "landmark_jitter", "face_count", "speech_ratio",
               "av_sync", "av_sync_lag")
    stateful = False
    default_resources = Resources(num_cpus=1.0)

    @dataclass
    class Config:
        blur_size: int | None = None  # decode the crop at this side for the blur score (None: native)
        blur_centre_fraction: float = 0.6  # central part of the crop (the face) the blur score sees
        pose_norm_deg: float = 90.0
        jitter_window: int = 5  # frames of the moving average that stands for smooth motion
        max_lag_frames: int = 5
        vad_threshold: float = 0.5

    def setup(self) -> None:
        self._vad = None  # loaded on first use: only rows without AudioFeatures need it

    def _vad_model(self):
        if self._vad is None:
            self._vad = load_vad()
        return self._vad

    def _frame_wh(self, row: dict[str, Any], landmark_arrays: dict[str, np.ndarray]) -> tuple[int, int]:
        if "image_size" in landmark_arrays:  # the frame size the landmark operator saw
            width, height = landmark_arrays["image_size"]
            return int(width), int(height)
        if row.get("width") and row.get("height"):
            return int(row["width"]), int(row["height"])
        info = probe(row["video_uri"], self.ctx.storage_options)
        return info.width, info.height

    def _envelope_and_speech_ratio(self, row: dict[str, Any], n_frames: int) -> tuple[np.ndarray | None, float]:
        """Per-frame RMS envelope (None without audio) and speech ratio, reusing AudioFeatures'
        outputs when the row has them."""
        known_ratio = row.get("speech_ratio")
        if row.get("audio_features_uri"):
            feats = load_npz(row["audio_features_uri"], self.ctx.storage_options)
            envelope = feats["rms"] if bool(feats["has_audio"]) else None
            ratio = known_ratio if known_ratio is not None else float(feats["vad"].mean()) if len(feats["vad"]) else 0.0
            return envelope, ratio
        audio = clip_audio(row, n_frames, False, self.ctx.storage_options)
        if audio is None:
            return None, known_ratio if known_ratio is not None else 0.0
        fps = float(row["fps"])
        if known_ratio is None:
            vad = frame_voice_activity(audio, self._vad_model(), fps, n_frames, self.config.vad_threshold)
            known_ratio = float(vad.mean()) if n_frames else 0.0
        return frame_rms(audio, fps, n_frames), known_ratio

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        track = unpack_arrays(row["_track"])
        lm = unpack_arrays(row["_landmarks"])
        landmarks = np.where(lm["valid"].astype(bool)[:, None, None], lm["landmarks"], np.nan)
        affine = unpack_arrays(row["_align"])["affine"]
        pose = unpack_arrays(row["_pose"])["pose"]
        n_frames = video_frame_count(row)
        crops = read_crop(row, c.blur_size, n_frames, self.ctx.storage_options)
        envelope, speech_ratio = self._envelope_and_speech_ratio(row, n_frames)
        sync, lag = (math.nan, 0) if envelope is None else av_sync_score(
            mouth_open_ratio(landmarks), envelope, c.max_lag_frames)
        jitter = landmark_jitter(landmarks, affine, int(row["crop_size"]), c.jitter_window)
        return {
            "face_size": face_size_ratio(track["bbox"], track["present"], self._frame_wh(row, lm)),
            "blur": laplacian_sharpness(crops, c.blur_centre_fraction),
            "pose_extremity": _finite_or_none(pose_extremity(pose, c.pose_norm_deg)),
            "landmark_jitter": _finite_or_none(jitter),
            "face_count": row.get("face_count"),
            "speech_ratio": float(speech_ratio),
            "av_sync": _finite_or_none(sync),
            "av_sync_lag": lag if math.isfinite(sync) else None,
        }


@register_stage
class QualityFilter(Operator):
    """Thresholds the QualityScores columns; every Config field left None is not applied.

    `min_<score>` fails rows whose score is below it, `max_<score>` rows above it. A row with a
    threshold on a score it lacks (None, e.g. av_sync of a clip without audio) fails that check.
    All failed checks are listed in the Filtered reason.
    """

    name = "filter"
    version = "1"
    inputs = ()
    outputs = ()
    stateful = False
    default_resources = Resources(num_cpus=0.25, batch_size=64)

    @dataclass
    class Config:
        min_face_size: float | None = None
        min_blur: float | None = None
        max_pose_extremity: float | None = None
        max_landmark_jitter: float | None = None
        max_face_count: int | None = None
        min_speech_ratio: float | None = None
        min_av_sync: float | None = None

    def failed_checks(self, row: dict[str, Any]) -> list[str]:
        reasons = []
        for f in fields(self.Config):
            limit = getattr(self.config, f.name)
            if limit is None:
                continue
            bound, column = f.name.split("_", 1)
            value = row.get(column)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                reasons.append(f"{column} missing ({bound} {limit:.4g})")
            elif bound == "min" and value < limit:
                reasons.append(f"{column} {value:.4g} < min {limit:.4g}")
            elif bound == "max" and value > limit:
                reasons.append(f"{column} {value:.4g} > max {limit:.4g}")
        return reasons

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        reasons = self.failed_checks(row)
        if reasons:
            raise Filtered("; ".join(reasons))
        return {}


__all__ = [
    "QualityFilter",
    "QualityScores",
    "av_sync_score",
    "face_size_ratio",
    "landmark_jitter",
    "laplacian_sharpness",
    "pose_extremity",
]

"""The `faces` stage: clip row -> one row per face track (`_track`), with the detector and tracker
of `facefab.face.detection` (MediaPipe BlazeFace + greedy IoU tracking; see there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from facefab.face.detection import FaceDetector, Track, detect_faces, detect_sparse, max_simultaneous, track_faces
from facefab.media.arrays import pack_arrays

from .base import Filtered, Operator, OperatorError, Resources, register_stage, stable_id
from .track_row import clip_frames


def face_detector(config: FaceTrack.Config) -> FaceDetector:
    """The detector a `faces` config section describes (preprocess and dub share the section)."""
    return FaceDetector(config.detector_model, config.min_confidence, config.detect_max_side)


@register_stage
class FaceTrack(Operator):
    """Clip row -> one row per face track (`_track`: frame_index, bbox, present, score)."""

    name = "faces"
    version = "1"
    inputs = ("video_uri", "start", "end", "fps")
    outputs = ("id", "clip_id", "track_id", "face_count", "track_start", "track_end", "_track")
    stateful = True
    fan_out = True
    default_resources = Resources(num_cpus=1.0)

    @dataclass
    class Config:
        detector_model: str = "full"  # "short" (faces within ~2 m) or "full" (~5 m)
        min_confidence: float = 0.5
        detect_max_side: int = 640  # frames are downscaled to this longest side for detection
        # detect on every Nth frame (and the last); the tracker interpolates the boxes between and
        # the landmarks stage follows the face with the mesh's own tracking (FaceLandmarks.Config.track_roi)
        detect_every: int = 5
        min_face_px: float = 32.0  # shorter box side, in source pixels
        iou_threshold: float = 0.3
        max_gap_frames: int = 5  # frames of missed detections bridged by interpolation
        min_track_frames: int = 25  # 1 s at 25 fps
        smooth_window: int = 5  # frames of the centred moving average on boxes

    def setup(self) -> None:
        if self.config.detect_every < 1:
            raise ValueError(f"faces.detect_every must be >= 1, got {self.config.detect_every}")
        self.detector = face_detector(self.config)

    def process_row(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        c = self.config
        frames = clip_frames(row, storage_options=self.ctx.storage_options)
        detections = detect_sparse(frames, self.detector, c.detect_every, min_face_px=c.min_face_px)
        if not detections:
            raise OperatorError(f"clip {row['id']} decoded to 0 frames")
        if not any(detections):
            raise Filtered(f"no face found in {len(detections)} frames")
        # one missed detection (a gap of 2 * detect_every frames) is bridged however sparse they are
        tracks = track_faces(detections, iou_threshold=c.iou_threshold,
                             max_gap_frames=max(c.max_gap_frames, 2 * c.detect_every - 1),
                             min_track_frames=c.min_track_frames, smooth_window=c.smooth_window)
        if not tracks:
            raise Filtered(f"no face track of at least {c.min_track_frames} frames in {len(detections)} frames")
        face_count = max_simultaneous(tracks, len(detections))
        return [self._track_row(row, track, face_count) for track in tracks]

    def _track_row(self, row: dict[str, Any], track: Track, face_count: int) -> dict[str, Any]:
        clip_start, fps = float(row.get("start") or 0.0), float(row["fps"])
        return {
            "id": stable_id(row["id"], track.track_id),
            "clip_id": row["id"],
            "track_id": track.track_id,
            "face_count": face_count,
            "track_start": clip_start + int(track.frame_index[0]) / fps,
            "track_end": clip_start + (int(track.frame_index[-1]) + 1) / fps,
            "_track": pack_arrays(frame_index=track.frame_index.astype(np.int32), bbox=track.bbox,
                                  present=track.present, score=track.score),
        }


__all__ = [
    "FaceDetector",
    "FaceTrack",
    "Track",
    "detect_faces",
    "max_simultaneous",
    "track_faces",
]

"""The `landmarks` stage: track row -> `_landmarks` (478-point mesh per frame, `facefab.face.mesh`).

- landmarks (T,478,3) float32: x, y in source pixels; z in source pixels too, relative depth
  (MediaPipe's z scaled like x, smaller = nearer the camera); NaN where not found;
- valid (T,) bool; image_size (2,) int32 = source width, height.
A track with too few frames meshed (`min_valid_fraction`) fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from facefab.face.mesh import FaceMesher, mesh_track
from facefab.media import MediaError
from facefab.media.arrays import pack_arrays, unpack_arrays
from facefab.media.frame_cache import take

from .base import Operator, OperatorError, Resources, register_stage
from .track_row import clip_frames


def face_mesher(config: FaceLandmarks.Config) -> FaceMesher:
    """The mesher a `landmarks` config section describes (preprocess and dub share the section)."""
    return FaceMesher(config.min_confidence, config.crop_scale, config.crop_px, config.track_roi)


@register_stage
class FaceLandmarks(Operator):
    """Track row -> `_landmarks` (landmarks (T,478,3), valid (T,), image_size (2,))."""

    name = "landmarks"
    version = "1"
    inputs = ("video_uri", "start", "end", "fps", "_track")
    outputs = ("_landmarks", "landmark_fraction")
    stateful = True
    default_resources = Resources(num_cpus=1.0)

    @dataclass
    class Config:
        min_confidence: float = 0.5
        crop_scale: float = 1.8  # crop side / longer side of the detection box
        crop_px: int = 256  # crop resolution fed to the mesh (it runs at 192 px internally)
        min_valid_fraction: float = 0.8  # fewer frames with landmarks -> the row fails
        # follow the mesh's own region of interest from frame to frame (MediaPipe's video mode)
        # instead of running its face detector on every frame; see face.mesh.FaceMesher
        track_roi: bool = True

    def setup(self) -> None:
        self.mesher = face_mesher(self.config)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        track = unpack_arrays(row["_track"])
        frame_index = track["frame_index"]
        if len(frame_index) == 0:
            raise OperatorError("the track has no frames")
        frames = take(clip_frames(row, storage_options=self.ctx.storage_options), frame_index)
        try:
            landmarks, valid = mesh_track(frames, track["bbox"], self.mesher)
        except MediaError as e:
            raise OperatorError(f"track frames {frame_index[0]}..{frame_index[-1]} do not fit the clip: {e}") from e
        fraction = float(valid.mean())
        if fraction < self.config.min_valid_fraction:
            raise OperatorError(f"face landmarks found in {valid.sum()}/{len(valid)} frames "
                                f"({fraction:.0%} < {self.config.min_valid_fraction:.0%})")
        width, height = self._frame_size(row)
        return {
            "_landmarks": pack_arrays(landmarks=landmarks, valid=valid,
                                      image_size=np.array([width, height], np.int32)),
            "landmark_fraction": round(fraction, 4),
        }

    def _frame_size(self, row: dict[str, Any]) -> tuple[int, int]:
        if row.get("width") and row.get("height"):
            return int(row["width"]), int(row["height"])
        first = next(iter(clip_frames(row, storage_options=self.ctx.storage_options)))
        return first.shape[1], first.shape[0]


__all__ = [
    "FaceLandmarks",
    "FaceMesher",
    "mesh_track",
]

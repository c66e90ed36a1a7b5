"""Probe and normalise: open each input video, reject unreadable ones with a clear error, and
record what later stages need. Normalisation (target fps, 16 kHz mono audio, rotation) happens on
decode, so no full re-encode of the source is written: clips reference the source by time range.
"""

from __future__ import annotations

from dataclasses import dataclass

from facefab.media import MediaError, probe

from .base import Operator, OperatorError, Resources, register_stage


@register_stage
class ProbeVideo(Operator):
    name = "probe"
    version = "1"
    inputs = ("video_uri",)
    outputs = ("width", "height", "source_fps", "fps", "duration", "num_frames", "rotation", "has_audio")
    default_resources = Resources(num_cpus=0.25, batch_size=1)

    @dataclass
    class Config:
        target_fps: float = 25.0  # every later stage sees the video at this frame rate
        min_duration: float = 0.5  # seconds; shorter inputs are rejected
        max_duration: float | None = None  # seconds; None = no limit

    def process_row(self, row):
        self.ctx.check_input(row["video_uri"])
        try:
            info = probe(row["video_uri"], self.ctx.storage_options)
        except MediaError as exc:
            raise OperatorError(str(exc)) from None
        if not info.has_video:
            raise OperatorError(f"'{row['video_uri']}' has no video stream")
        if info.num_frames < 2:
            raise OperatorError(f"'{row['video_uri']}' holds a single image, not a video")
        if info.duration < self.config.min_duration:
            raise OperatorError(f"video is {info.duration:.2f} s ({info.num_frames} frames); "
                                f"the minimum is {self.config.min_duration} s")
        if self.config.max_duration and info.duration > self.config.max_duration:
            raise OperatorError(f"video is {info.duration:.1f} s; the configured maximum is {self.config.max_duration} s")
        return {
            "width": info.width, "height": info.height, "source_fps": info.fps, "fps": self.config.target_fps,
            "duration": info.duration, "num_frames": info.num_frames, "rotation": info.rotation,
            "has_audio": info.has_audio,
        }

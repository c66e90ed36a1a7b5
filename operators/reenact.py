"""`animate` from a driving video: one portrait moved like the face in a driving video (reenactment),
or along sparse point trajectories (MOFA-Video's control).

    reference_uri, video_uri -> reenact_portrait -> out_uri (ROOT/outputs/<name>.mp4)
    reference_uri, trajectories_uri -> trajectory_portrait -> out_uri

The portrait's face is found as `animate` from speech finds it; the driving video's largest face is
detected and meshed on every frame.
The output has the driving video's frame rate and length (cut by `max_duration`), its audio muxed when
it has one, and every provenance mark; a square head crop of `size` pixels, or with `paste_back` the
whole portrait.

- `model="weightfree"` (what "auto" runs without a checkpoint): mesh-driven reenactment
  (`models/portrait/reenact.py`).
- `model="face-vid2vid"` (or "auto" with a checkpoint naming it): the neural pipeline
  (`facefab.models.<system>`, the `DrivenPipeline` interface) on the portrait's aligned crop; the
  driving frames go through ONE crop, the alignment of the first driving frame with a face, so the
  driving head's own motion stays in them.

`relative` (default): the driving motion relative to its first frame moves the portrait, which keeps its
own face shape and pose; `--no-relative`/`relative=false` copies the driving face's absolute shape.

Trajectories (`trajectories_uri`, read by `trajectory_source.read_trajectories`): a JSON file, a
Parquet/CSV table (track, frame, x, y) in the portrait's pixels, a preprocess `flow` artifact (.npz) or a
preprocess ROOT[#clip] (that track's flow trajectories and its frame rate). Aligned-crop tracks are placed
on the portrait through its own alignment, so the motion of that face's parts moves the same parts here.
The weight-free path (`models/portrait/trajectories.py`) interpolates them into a dense field (thin-plate
spline) and warps; the output has the tracks' length at `fps` (default: the clip's rate, else 25).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np

from facefab.models.portrait.reenact import ReenactConfig, WeightFreeReenactment
from facefab.models.portrait.trajectories import TrajectoryAnimation, TrajectoryConfig

from .animate import PortraitGenerator, PortraitJobConfig
from .base import OperatorError, Resources, register_stage
from .dub import StageTimer, output_uri
from .trajectory_source import read_trajectories
from .video_faces import muxable_audio, probe_video

DRIVEN = ("face-vid2vid", "follow-your-emoji", "megactor", "mofa-video", "face-adapter")
AUDIO_RATE = 48000  # the driving video's sound is resampled to this for the mux
DEFAULT_FPS = 25.0  # of trajectories that do not come with a clip's frame rate


@dataclass
class ReenactJobConfig(PortraitJobConfig):
    """Settings of an animate-from-a-driving-video job."""

    relative: bool = field(default=True, metadata={
        "help": "move the portrait by the driving motion relative to its first frame (keeps its face shape); "
                "false: copy the driving face's absolute shape"})
    motion: ReenactConfig = field(default_factory=ReenactConfig)

    neural: ClassVar[tuple[str, ...]] = DRIVEN


@dataclass
class DrivingFace:
    """The driving video's face, per frame."""

    points: np.ndarray  # (N, 478, 3) mesh in the video's pixels, NaN where no face was found
    fps: float
    audio: np.ndarray | None  # (C, samples) at AUDIO_RATE, or None without a sound track

    @property
    def found(self) -> np.ndarray:
        return np.isfinite(self.points[:, 0, 0])


@register_stage
class ReenactPortrait(PortraitGenerator):
    """(reference_uri, video_uri) -> the reenacted mp4 at `out_uri`."""

    name = "reenact_portrait"
    version = "1"
    weightfree_label = "weightfree-reenactment"
    inputs = ("reference_uri", "video_uri")
    outputs = ("out_uri", "model", "checkpoint", "frames", "duration", "fps", "face_count", "driving_face_fraction",
               "c2pa", "stage_seconds")
    default_resources = Resources(num_cpus=0.5)
    Config = ReenactJobConfig

    def weightfree(self):
        from dataclasses import replace

        return WeightFreeReenactment(replace(self.config.motion, relative=self.config.relative))

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        timer = StageTimer()
        self.ctx.check_input(row["video_uri"])
        image, faces, points = self.portrait_face(row, timer)
        driving = self.driving_face(row["video_uri"], timer)
        n = len(driving.points)
        if isinstance(self.model, WeightFreeReenactment):
            canvas, canvas_points, _ = self.head_framed(image, points)
            with timer("plan"):
                plan = self.model.plan(canvas_points, driving.points)
            frames = (self.model.render(plan, t, canvas) for t in range(n))
        else:
            with timer("generate"):
                frames = self._neural(image, points, row["video_uri"], driving)
        uri = output_uri(self.ctx, row)
        with timer("render_encode"):
            written = self.write(uri, frames, driving.fps, driving.audio, AUDIO_RATE, row)
        return {"out_uri": uri, "model": self.model_label, "checkpoint": self.checkpoint_uri(), "frames": n,
                "duration": round(n / driving.fps, 3), "fps": driving.fps, "face_count": len(faces),
                "driving_face_fraction": round(float(driving.found.mean()), 4), "c2pa": written.get("c2pa"),
                "stage_seconds": timer.merged_into(row)}

    def driving_face(self, uri: str, timer: StageTimer) -> DrivingFace:
        """Decode the driving video once, meshing its largest face frame by frame."""
        from facefab.face.detection import detect_faces
        from facefab.media import MediaError, iter_frames

        c, opts = self.config, self.ctx.storage_options
        with timer("decode"):
            info = probe_video(uri, opts, what="driving video")
        meshes: list[np.ndarray] = []
        with timer("driving_mesh"):
            try:
                for chunk in iter_frames(uri, end=c.max_duration, storage_options=opts):
                    # the mesh is most accurate in the crop around the detector's box (as preprocess meshes)
                    for frame, faces in zip(chunk, detect_faces(chunk, self.detector, min_face_px=c.faces.min_face_px),
                                            strict=True):
                        found = None
                        if faces:
                            best = max(faces, key=lambda d: float((d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1])))
                            found = self.mesher(frame, best.bbox)
                        meshes.append(np.full((478, 3), np.nan) if found is None else np.asarray(found, np.float64))
            except MediaError as e:
                raise OperatorError(f"driving video: {e}") from e
        if not meshes:
            raise OperatorError(f"driving video '{uri}' has no frames")
        points = np.stack(meshes)
        if not np.isfinite(points[:, 0, 0]).any():
            raise OperatorError(f"driving video '{uri}': no face found in any frame")
        with timer("decode"):
            audio = muxable_audio(uri, info, len(points) / info.fps, AUDIO_RATE, opts, what="driving video")
        return DrivingFace(points, float(info.fps), audio)

    def _neural(self, image: np.ndarray, points: np.ndarray, uri: str, driving: DrivingFace):
        """The pipeline's frames: the portrait's aligned crop driven by the driving video through the
        alignment of its first frame with a face (one crop for the whole video)."""
        from facefab.face.alignment import similarity_from_landmarks, warp_to_crop
        from facefab.media import iter_frames

        c, side = self.config, self.model.size
        crop, crop_points, affine = self.aligned(image, points)
        first = int(np.flatnonzero(driving.found)[0])
        fixed = similarity_from_landmarks(driving.points[first], side)
        crops = np.stack([warp_to_crop(frame, fixed, side)
                          for chunk in iter_frames(uri, end=c.max_duration, storage_options=self.ctx.storage_options)
                          for frame in chunk])[: len(driving.points)]
        driving_points = driving.points[: len(crops), :, :2] @ fixed[:, :2].T + fixed[:, 2]
        frames = self.model(crop, crop_points, crops, driving_points.astype(np.float32), relative=c.relative,
                            steps=c.steps, guidance_scale=c.guidance_scale, seed=c.seed)
        if len(frames) != len(driving.points):
            raise OperatorError(f"{self.model_label} returned {len(frames)} frames for {len(driving.points)}")
        return self.framed_output(frames, image, affine)


@dataclass
class TrajectoryJobConfig(PortraitJobConfig):
    """Settings of an animate-along-trajectories job."""

    fps: float | None = field(default=None, metadata={
        "help": "output frame rate (default: the clip's when the tracks come from a preprocess root, else 25)"})
    motion: TrajectoryConfig = field(default_factory=TrajectoryConfig)

    neural: ClassVar[tuple[str, ...]] = ("mofa-video",)  # the pipelines with `animate_tracks`


@register_stage
class TrajectoryPortrait(PortraitGenerator):
    """(reference_uri, trajectories_uri) -> the portrait moved along the tracks, an mp4 at `out_uri`."""

    name = "trajectory_portrait"
    version = "1"
    weightfree_label = "weightfree-trajectories"
    inputs = ("reference_uri", "trajectories_uri")
    outputs = ("out_uri", "model", "checkpoint", "frames", "duration", "fps", "face_count", "tracks", "c2pa",
               "stage_seconds")
    default_resources = Resources(num_cpus=0.5)
    Config = TrajectoryJobConfig

    def weightfree(self):
        return TrajectoryAnimation(self.config.motion)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        from facefab.face.alignment import similarity_from_landmarks

        c, timer = self.config, StageTimer()
        self.ctx.check_input(row["trajectories_uri"])
        image, faces, points = self.portrait_face(row, timer)
        with timer("decode"):
            found = read_trajectories(row["trajectories_uri"], self.ctx.storage_options)
        tracks, fps = found.tracks, c.fps or found.fps or DEFAULT_FPS
        if c.max_duration is not None:
            tracks = tracks[:, : max(1, round(c.max_duration * fps))]
        if found.crop_size is not None:  # aligned-crop coordinates -> the portrait through its own alignment
            to_image = cv2.invertAffineTransform(similarity_from_landmarks(points, found.crop_size))
            tracks = tracks @ to_image[:, :2].T + to_image[:, 2]
        if isinstance(self.model, TrajectoryAnimation):
            canvas, _, affine = self.head_framed(image, points)
            tracks = tracks @ affine[:, :2].T + affine[:, 2]
            try:
                tracks = self.model.plan(tracks)
            except ValueError as e:
                raise OperatorError(f"trajectories '{row['trajectories_uri']}': {e}") from e
            n = tracks.shape[1]
            frames = (self.model.render(tracks, t, canvas) for t in range(n))
        else:
            with timer("generate"):
                frames, n = self._neural(image, points, tracks)
        uri = output_uri(self.ctx, row)
        with timer("render_encode"):
            written = self.write(uri, frames, fps, None, AUDIO_RATE, row)
        return {"out_uri": uri, "model": self.model_label, "checkpoint": self.checkpoint_uri(), "frames": n,
                "duration": round(n / fps, 3), "fps": fps, "face_count": len(faces), "tracks": len(tracks),
                "c2pa": written.get("c2pa"), "stage_seconds": timer.merged_into(row)}

    def _neural(self, image: np.ndarray, points: np.ndarray, tracks: np.ndarray):
        """(the pipeline's frames, their count): the portrait's aligned crop moved along `tracks` (K, N, 2,
        portrait pixels) by `animate_tracks`, resized to `size` or pasted back like the other neural paths."""
        c = self.config
        crop, _, affine = self.aligned(image, points)
        frames = self.model.animate_tracks(crop, tracks @ affine[:, :2].T + affine[:, 2], steps=c.steps,
                                           guidance_scale=c.guidance_scale, seed=c.seed)
        if len(frames) != tracks.shape[1]:
            raise OperatorError(f"{self.model_label} returned {len(frames)} frames for {tracks.shape[1]}")
        return self.framed_output(frames, image, affine), len(frames)


__all__ = ["DRIVEN", "DrivingFace", "ReenactJobConfig", "ReenactPortrait", "TrajectoryJobConfig",
           "TrajectoryPortrait", "read_trajectories"]

"""The stage base of generators that edit the faces of a video in place with a reference face (makeup,
swap): `FaceVideoEditor`.

    video_uri, reference_uri -> <stage> -> out_uri (ROOT/outputs/<name>.mp4)

The reference image must show one face (or name one with `face_index`); no face, several faces or an
unreadable file fail the row. The video is decoded once (kept in memory when it fits the frame budget,
else streamed per pass), its faces detected every `detect_every` frames, tracked and meshed frame by
frame (the mesh averaged over `smooth_window` frames); every track (`track="all"`) or the chosen one is
edited. The output has the source's size, frame rate, length (cut by `max_duration`) and sound, and
every provenance mark.

A subclass says what it keeps of the reference (`prepare`), what it plans per face track (`plan_track`)
and how one frame's face is edited (`edit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from .base import OperatorError, Resources
from .dub import StageTimer, output_uri
from .faces import FaceTrack, face_detector
from .generator import GeneratorOperator
from .landmarks import FaceLandmarks, face_mesher
from .video_faces import (
    MeshedTrack,
    decoded_or_streamed,
    detect_and_track,
    mesh_tracks,
    muxable_audio,
    probe_video,
    reference_face,
    select_track,
)

AUDIO_RATE = 48000


@dataclass
class FaceEditJobConfig(GeneratorOperator.Config):
    """Settings every face-editing job shares."""

    model: str = field(default="auto", metadata={"help": "auto | weightfree"})
    track: str = field(default="all", metadata={"help": "faces to edit: all | largest | central | a track number"})
    face_index: int | None = field(default=None, metadata={
        "help": "which face of a reference with several (0: the largest); required when there are several"})
    max_duration: float | None = field(default=None, metadata={"help": "process at most this many seconds"})
    detect_every: int = field(default=3, metadata={"help": "detect faces on every Nth frame; the tracker "
                                                            "interpolates the boxes in between"})
    smooth_window: int = field(default=3, metadata={"help": "frames the mesh is averaged over (steadier masks)"})
    crf: int = 18
    watermark: bool = field(default=True, metadata={
        "help": "invisible watermark (the synthetic tag is always written)"})
    faces: FaceTrack.Config = field(default_factory=lambda: FaceTrack.Config(min_track_frames=5))
    landmarks: FaceLandmarks.Config = field(default_factory=FaceLandmarks.Config)

    models: ClassVar[tuple[str, ...]] = ("auto", "weightfree")
    section: ClassVar[str | None] = None  # the weight-free model's settings (a field with its own validate())


def validate(config: FaceEditJobConfig) -> None:
    if config.model not in config.models:
        raise ValueError(f"model must be one of {config.models}, got {config.model!r}")
    if config.track not in ("all", "largest", "central") and not config.track.isdigit():
        raise ValueError(f"track must be all, largest, central or a track number, got {config.track!r}")
    if config.max_duration is not None and config.max_duration <= 0:
        raise ValueError(f"max_duration must be positive, got {config.max_duration}")
    if config.detect_every < 1 or config.smooth_window < 1:
        raise ValueError("detect_every and smooth_window must be >= 1")
    if config.section:
        getattr(config, config.section).validate()


@dataclass
class AlignedFace:
    """A face's aligned crop: what the neural editors see of a frame or of the reference."""

    crop: np.ndarray  # (S, S, 3) uint8 RGB
    points: np.ndarray  # (478, 3) the mesh in crop pixels (z scaled like x, y)
    affine: np.ndarray  # (2, 3) image -> crop

    @classmethod
    def of(cls, image: np.ndarray, points: np.ndarray, size: int) -> AlignedFace:
        from facefab.face.alignment import points_to_crop, similarity_from_landmarks, warp_to_crop

        affine = similarity_from_landmarks(points, size)
        return cls(warp_to_crop(image, affine, size), points_to_crop(points[None], affine[None])[0], affine)

    def pasted(self, frame: np.ndarray, crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """`frame` with the edited `crop` blended in through `mask` ((S, S) float in [0, 1])."""
        import cv2

        from facefab.face.alignment import paste_back

        return paste_back(frame, crop, cv2.invertAffineTransform(self.affine), mask)


@dataclass
class _FaceEdit:
    """The planned edit of one video's faces: which faces each frame has and each track's plan."""

    editor: FaceVideoEditor
    reference: Any
    plans: list
    per_frame: list[list[tuple[int, int, np.ndarray]]]  # per frame: (track, step in the track, mesh)
    track_count: int
    tracks_done: int

    @property
    def frames(self) -> int:
        return len(self.per_frame)

    @property
    def face_fraction(self) -> float:
        return round(float(np.mean([bool(f) for f in self.per_frame])), 4)

    def edited(self, frames):
        """The frames (decoded again when streamed) with every planned face edited."""
        for t, frame in enumerate(frames):
            for k, step, points in self.per_frame[t]:
                frame = self.editor.edit(frame, points, self.reference, self.plans[k], step)
            yield frame


class FaceVideoEditor(GeneratorOperator):
    """(video_uri, reference_uri) -> the edited mp4 at `out_uri` (see the module docstring)."""

    inputs = ("video_uri", "reference_uri")
    outputs = ("out_uri", "model", "checkpoint", "frames", "duration", "fps", "width", "height", "track_count",
               "tracks_done", "face_fraction", "c2pa", "stage_seconds")
    default_resources = Resources(num_cpus=0.5)
    model_label = "weightfree"  # the provenance tag's model; the system's name once a checkpoint is loaded

    def setup(self) -> None:
        validate(self.config)
        super().setup()
        self.detector = face_detector(self.config.faces)
        # Each frame meshed on its own (static mode): the edit is drawn along these landmarks, and the
        # mesh's video-mode tracking sits about 1 % of the inter-ocular distance from per-frame meshing
        # (benchmarks/preprocess_equivalence.py), enough to move the made-up regions' edges measurably
        # (tests/pipelines/test_makeup.py)
        self.mesher = face_mesher(replace(self.config.landmarks, track_roi=False))

    def checkpoint_uri(self) -> str | None:
        return None if self.config.model == "weightfree" else super().checkpoint_uri()

    def load_default(self):
        if self.config.model == self.model_name:
            return super().load_default()  # the neural model asked for by name, and no checkpoint: an error
        return self.weightfree()

    def load(self, checkpoint: str):
        from facefab.models.weights import resolve_checkpoint

        from .animate import pipeline_class

        folder = resolve_checkpoint(checkpoint, self.ctx.storage_options, self.config.cache_dir)
        self.model_label = self.model_name
        pipeline = pipeline_class(self.model_name).from_pretrained(folder, device=self.config.device,
                                                                   dtype=self.config.dtype)
        return self.neural(pipeline)

    def weightfree(self) -> Any:
        """The weight-free model (what "auto" runs without a checkpoint)."""
        raise NotImplementedError

    def neural(self, pipeline: Any) -> Any:
        """The loaded neural pipeline behind the interface `prepare` / `plan_track` / `edit` call."""
        raise NotImplementedError

    @property
    def weight_free(self) -> bool:
        return self.model_label != self.model_name

    def prepare(self, image: np.ndarray, points: np.ndarray) -> Any:
        """What the model keeps of the reference face; ValueError: the reference cannot be used."""
        raise NotImplementedError

    def plan_track(self, reference: Any, track: MeshedTrack) -> Any:
        """Per face track, before its frames are edited (e.g. its state for temporal smoothing)."""
        return None

    def edit(self, frame: np.ndarray, points: np.ndarray, reference: Any, plan: Any, step: int) -> np.ndarray:
        """`frame` with the face meshed by `points` edited; `step`: the frame's index in its track."""
        raise NotImplementedError

    def _detect(self, frame: np.ndarray) -> list:
        from facefab.face.detection import detect_faces

        return detect_faces(frame[None], self.detector, min_face_px=self.config.faces.min_face_px)[0]

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        from facefab.media import is_image, local_path

        c, opts, timer = self.config, self.ctx.storage_options, StageTimer()
        self.ctx.check_input(row["video_uri"])
        self.ctx.check_input(row["reference_uri"])
        image, _, ref_points = reference_face(row["reference_uri"], self.detector, self.mesher,
                                              c.faces.min_face_px, c.face_index, timer, opts)
        try:
            reference = self.prepare(image, ref_points)
        except ValueError as e:
            raise OperatorError(f"reference '{row['reference_uri']}': {e}") from e
        if is_image(row["video_uri"]):
            return self._edit_still(row, reference, timer)
        info = probe_video(row["video_uri"], opts)
        uri = output_uri(self.ctx, row)
        with local_path(row["video_uri"], opts) as path:
            frames = decoded_or_streamed(path, info, c.max_duration, timer)
            edit = self._edit_faces(frames, (info.width, info.height), info.fps, row["video_uri"], reference,
                                    c.faces, timer)
            audio = muxable_audio(path, info, edit.frames / info.fps, AUDIO_RATE, None)
            with timer("render_encode"):
                written = self._write(uri, edit.edited(frames), info.fps, audio, row)
        return {"out_uri": uri, **self._model_columns(), "frames": edit.frames,
                "duration": round(edit.frames / info.fps, 3), "fps": info.fps, "width": info.width,
                "height": info.height, "track_count": edit.track_count, "tracks_done": edit.tracks_done,
                "face_fraction": edit.face_fraction, "c2pa": written.get("c2pa"),
                "stage_seconds": timer.merged_into(row)}

    def _edit_still(self, row: dict[str, Any], reference: Any, timer: StageTimer) -> dict[str, Any]:
        """A still (`video_uri` names an image): its faces edited as a one-frame video, written as a PNG."""

        from facefab.media import MediaError, read_image
        from facefab.media.provenance import write_synthetic_image

        c = self.config
        try:
            with timer("decode"):
                image = read_image(row["video_uri"], self.ctx.storage_options)
        except MediaError as e:
            raise OperatorError(str(e)) from e
        height, width = image.shape[:2]
        edit = self._edit_faces(image[None], (width, height), 1.0, row["video_uri"], reference,
                                replace(c.faces, min_track_frames=1), timer)
        uri = output_uri(self.ctx, row, suffix=".png")
        with timer("render_encode"):
            written = write_synthetic_image(uri, next(iter(edit.edited(image[None]))), model=self.model_label,
                                            job_id=row.get("job_id") or row["id"],
                                            storage_options=self.ctx.storage_options, watermark=c.watermark)
        return {"out_uri": uri, **self._model_columns(), "frames": 1, "duration": None,
                "fps": None, "width": width, "height": height, "track_count": edit.track_count,
                "tracks_done": edit.tracks_done, "face_fraction": edit.face_fraction,
                "c2pa": written.get("c2pa"), "stage_seconds": timer.merged_into(row)}

    def _model_columns(self) -> dict[str, Any]:
        if self.weight_free:
            return {"model": "weightfree", "checkpoint": None}
        return {"model": self.model_name, "checkpoint": self.checkpoint_uri()}

    def _edit_faces(self, frames, size: tuple[int, int], fps: float, uri: str, reference: Any,
                    faces: FaceTrack.Config, timer: StageTimer) -> _FaceEdit:
        """Detect, track, choose and mesh the faces of `frames` (read once) and plan each track's edit."""
        c = self.config
        with timer("faces"):
            tracks, detections = detect_and_track(frames, self._detect, c.detect_every, faces, fps, uri)
            chosen = tracks if c.track == "all" else [select_track(tracks, c.track, size)]
        with timer("landmarks"):
            meshed = mesh_tracks(frames, chosen, self.mesher, faces.max_gap_frames, c.smooth_window)
        if not any(track.found.any() for track in meshed):
            raise OperatorError(f"faces were tracked in '{uri}' but the face mesh found none of them")
        n = len(detections)  # one per decoded frame: no second pass to count a streamed video
        with timer("plan"):
            plans = [self.plan_track(reference, track) for track in meshed]
        per_frame: list[list[tuple[int, int, np.ndarray]]] = [[] for _ in range(n)]
        for k, track in enumerate(meshed):
            for step, (t, points, found) in enumerate(zip(track.frame_index, track.landmarks, track.found,
                                                          strict=True)):
                if found:
                    per_frame[t].append((k, step, points))
        return _FaceEdit(self, reference, plans, per_frame, len(tracks), len(meshed))

    def _write(self, uri: str, frames, fps: float, audio, row: dict[str, Any]) -> dict[str, Any]:
        from facefab.media import provenance

        c = self.config
        return provenance.write_synthetic_video(uri, frames, fps, model=self.model_label,
                                                job_id=row.get("job_id") or row["id"], audio=audio,
                                                audio_rate=AUDIO_RATE, crf=c.crf,
                                                storage_options=self.ctx.storage_options, watermark=c.watermark)


__all__ = ["AUDIO_RATE", "FaceEditJobConfig", "FaceVideoEditor", "validate"]

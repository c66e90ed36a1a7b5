"""`animate` from speech: one portrait + a speech track -> a talking-head video.

    reference_uri, audio_uri -> animate_portrait -> out_uri (ROOT/outputs/<name>.mp4)

The face is found on the portrait (the largest; several faces need `face_index`), framed as a
square head crop of `size` pixels (or the whole portrait with `paste_back`) and animated for
exactly the audio's length at `fps`, the speech muxed in and every provenance mark written.
Without a checkpoint the weight-free talking photo runs (`models/portrait/weightfree.py`); the
neural systems of the registry (Hallo, V-Express, GAIA) are planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from facefab.models.lipsync.speech import as_speech, speech_features
from facefab.models.portrait.weightfree import PortraitConfig, WeightFreePortrait

from .base import OperatorError, Resources, register_stage
from .dub import FEATURE_RATE, StageTimer, check_speech, output_uri, read_new_audio
from .faces import FaceTrack, face_detector
from .generator import GeneratorOperator
from .landmarks import FaceLandmarks, face_mesher

MODELS = ("auto", "weightfree")


@dataclass
class AnimateConfig(GeneratorOperator.Config):
    """Settings of an animate-from-speech job."""

    model: str = field(default="auto", metadata={"help": "auto | weightfree (the neural systems are planned)"})
    size: int = field(default=512, metadata={"help": "side of the square head crop written"})
    head_scale: float = field(default=2.0, metadata={"help": "head crop side / the face mesh's larger extent"})
    paste_back: bool = field(default=False, metadata={"help": "write the whole portrait, not the head crop"})
    face_index: int | None = field(default=None, metadata={
        "help": "which face of a portrait with several (0: the largest); required when there are several"})
    fps: float = 25.0
    max_duration: float | None = field(default=None, metadata={"help": "animate at most this many seconds of audio"})
    min_speech_seconds: float = field(default=0.3, metadata={"help": "audio with less voice activity fails its row"})
    vad_threshold: float = 0.5
    crf: int = 18
    watermark: bool = field(default=True, metadata={"help": "invisible watermark (the synthetic tag is always written)"})
    faces: FaceTrack.Config = field(default_factory=FaceTrack.Config)
    landmarks: FaceLandmarks.Config = field(default_factory=FaceLandmarks.Config)
    portrait: PortraitConfig = field(default_factory=PortraitConfig)


def validate(config: AnimateConfig) -> None:
    if config.model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {config.model!r}")
    if config.size < 64 or config.size % 2:
        raise ValueError(f"size must be an even number of pixels >= 64, got {config.size}")
    if config.fps <= 0:
        raise ValueError(f"fps must be positive, got {config.fps}")
    if config.max_duration is not None and config.max_duration <= 0:
        raise ValueError(f"max_duration must be positive, got {config.max_duration}")


def head_crop(points: np.ndarray, scale: float, size: int) -> np.ndarray:
    """(2, 3) affine portrait -> a square crop of `size` centred on the face mesh, its side `scale`
    times the mesh's larger extent (no rotation: the portrait's own roll is kept)."""
    xy = np.asarray(points, np.float64)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    centre = (lo + hi) / 2
    side = float((hi - lo).max() * scale)
    k = size / side
    return np.array([[k, 0.0, size / 2 - k * centre[0]], [0.0, k, size / 2 - k * centre[1]]])


@register_stage
class AnimatePortrait(GeneratorOperator):
    """(reference_uri, audio_uri) -> the talking-head mp4 at `out_uri`."""

    name = "animate_portrait"
    version = "1"
    model_name = ""
    inputs = ("reference_uri", "audio_uri")
    outputs = ("out_uri", "model", "frames", "duration", "face_count", "c2pa", "stage_seconds")
    default_resources = Resources(num_cpus=0.5)
    Config = AnimateConfig

    def setup(self) -> None:
        from facefab.audio.features import load_vad

        super().setup()
        self.detector = face_detector(self.config.faces)
        self.mesher = face_mesher(self.config.landmarks)
        self.vad = load_vad()

    def checkpoint_uri(self) -> str | None:
        return None

    def load_default(self):
        return WeightFreePortrait(self.config.portrait)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        from facefab.face.detection import detect_faces
        from facefab.media import MediaError, read_image

        c, opts, timer = self.config, self.ctx.storage_options, StageTimer()
        self.ctx.check_input(row["reference_uri"])
        self.ctx.check_input(row["audio_uri"])
        with timer("decode"):
            try:
                image = read_image(row["reference_uri"], opts)
            except MediaError as e:
                raise OperatorError(f"reference: {e}") from e
            audio = read_new_audio(row["audio_uri"], FEATURE_RATE, True, c.max_duration, opts)
        check_speech(audio, self.vad, c.vad_threshold, c.min_speech_seconds, f"audio '{row['audio_uri']}'",
                     "nothing to animate")
        with timer("face"):
            faces = sorted(detect_faces(image[None], self.detector, min_face_px=c.faces.min_face_px)[0],
                           key=lambda d: -float((d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1])))
            face = self._pick(faces, row["reference_uri"])
            points = self.mesher(image, face.bbox)
            if points is None:
                raise OperatorError(f"reference '{row['reference_uri']}': the face mesh found no landmarks on the face")
            points = np.asarray(points, np.float64)[:, :2]
        if not c.paste_back:
            affine = head_crop(points, c.head_scale, c.size)
            image = cv2.warpAffine(image, affine, (c.size, c.size), flags=cv2.INTER_AREA if affine[0, 0] < 1
                                   else cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
            points = points @ affine[:, :2].T + affine[:, 2]
        n = max(1, round(len(audio) / FEATURE_RATE * c.fps))
        with timer("audio_features"):
            arrays = speech_features(audio, c.fps, n, self.vad, c.vad_threshold)
            speech = as_speech({f"new_{k}": v for k, v in arrays.items()}, "new", c.fps, 8)
        plan = self.model.plan(points, speech, c.fps, image.shape[:2])
        uri = output_uri(self.ctx, row)
        frames = (self.model.render(plan, t, image, points) for t in range(n))
        with timer("render_encode"):
            written = self._write(uri, frames, audio, row)
        return {"out_uri": uri, "model": "weightfree", "frames": n, "duration": round(n / c.fps, 3),
                "face_count": len(faces), "c2pa": written.get("c2pa"), "stage_seconds": timer.merged_into(row)}

    def _pick(self, faces: list, uri: str):
        index = self.config.face_index
        if not faces:
            raise OperatorError(f"reference '{uri}': no face found")
        if index is None:
            if len(faces) > 1:
                raise OperatorError(f"reference '{uri}' shows {len(faces)} faces: choose one with --face-index "
                                    "(0: the largest)")
            return faces[0]
        if not 0 <= index < len(faces):
            raise OperatorError(f"reference '{uri}' shows {len(faces)} face(s); --face-index {index} is out of range")
        return faces[index]

    def _write(self, uri: str, frames, audio: np.ndarray, row: dict[str, Any]) -> dict[str, Any]:
        from facefab.media import provenance

        c = self.config
        return provenance.write_synthetic_video(uri, frames, c.fps, model="weightfree-portrait",
                                                job_id=row.get("job_id") or row["id"], audio=audio,
                                                audio_rate=FEATURE_RATE, crf=c.crf,
                                                storage_options=self.ctx.storage_options, watermark=c.watermark)


__all__ = ["AnimateConfig", "AnimatePortrait", "head_crop", "validate"]

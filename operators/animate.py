"""`animate` from speech: one portrait + a speech track -> a talking-head video.

    reference_uri, audio_uri[, pose_uri] -> animate_portrait -> out_uri (ROOT/outputs/<name>.mp4)

The face is found on the portrait (the largest; several faces need `face_index`) and animated for
exactly the audio's length at `fps`, the speech muxed in and every provenance mark written. The
output is a square head crop of `size` pixels, or with `paste_back` the whole portrait.

- `model="weightfree"` (what "auto" runs without a checkpoint): the weight-free talking photo
  (`models/portrait/weightfree.py`) on the head crop or the whole portrait.
- `model="hallo" | "v-express" | "gaia"` (or "auto" with a checkpoint, which names its pipeline in
  model_index.json): the neural pipeline (`facefab.models.<system>`, the `TalkingPipeline`
  interface) on the portrait's aligned crop at the model's size, framed exactly as preprocess frames
  its training crops; the frames are resized to `size`, or pasted back through the inverse alignment.

`pose_uri` (optional): a driving video or a head-pose table to follow (`pose_source`); the weight-free
photo follows its roll and the shift its yaw/pitch cause, the neural models take it as their pose input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np

from facefab.models.lipsync.speech import as_speech, speech_features
from facefab.models.portrait.weightfree import PortraitConfig, WeightFreePortrait

from .base import OperatorError, Resources, register_stage
from .dub import FEATURE_RATE, StageTimer, check_speech, output_uri, read_new_audio
from .faces import FaceTrack, face_detector
from .generator import GeneratorOperator
from .landmarks import FaceLandmarks, face_mesher
from .pose_source import read_pose_series
from .video_faces import reference_face

NEURAL = ("hallo", "v-express", "gaia")


@dataclass
class PortraitJobConfig(GeneratorOperator.Config):
    """Settings every portrait animation job shares (from speech or from a driving video)."""

    model: str = field(default="auto", metadata={
        "help": "auto (weightfree, or the pipeline a --checkpoint names) | weightfree | a neural system"})
    size: int = field(default=512, metadata={"help": "side of the square head crop written"})
    head_scale: float = field(default=2.0, metadata={"help": "head crop side / the face mesh's larger extent"})
    paste_back: bool = field(default=False, metadata={"help": "write the whole portrait, not the head crop"})
    face_index: int | None = field(default=None, metadata={
        "help": "which face of a portrait with several (0: the largest); required when there are several"})
    max_duration: float | None = field(default=None, metadata={"help": "animate at most this many seconds"})
    crf: int = 18
    watermark: bool = field(default=True, metadata={"help": "invisible watermark (the synthetic tag is always written)"})
    steps: int | None = field(default=None, metadata={"help": "denoising steps of a diffusion model (None: its own)"})
    guidance_scale: float | None = field(default=None, metadata={"help": "classifier-free guidance (None: the model's)"})
    seed: int = 0
    faces: FaceTrack.Config = field(default_factory=FaceTrack.Config)
    landmarks: FaceLandmarks.Config = field(default_factory=FaceLandmarks.Config)

    neural: ClassVar[tuple[str, ...]] = ()  # the neural systems this job runs

    @classmethod
    def models(cls) -> tuple[str, ...]:
        return ("auto", "weightfree", *cls.neural)


@dataclass
class AnimateConfig(PortraitJobConfig):
    """Settings of an animate-from-speech job."""

    fps: float = 25.0
    min_speech_seconds: float = field(default=0.3, metadata={"help": "audio with less voice activity fails its row"})
    vad_threshold: float = 0.5
    portrait: PortraitConfig = field(default_factory=PortraitConfig)

    neural: ClassVar[tuple[str, ...]] = NEURAL


def validate(config: PortraitJobConfig) -> None:
    if config.model not in config.models():
        raise ValueError(f"model must be one of {config.models()}, got {config.model!r}")
    if config.size < 64 or config.size % 2:
        raise ValueError(f"size must be an even number of pixels >= 64, got {config.size}")
    if getattr(config, "fps", None) is not None and config.fps <= 0:
        raise ValueError(f"fps must be positive, got {config.fps}")
    if config.max_duration is not None and config.max_duration <= 0:
        raise ValueError(f"max_duration must be positive, got {config.max_duration}")
    if config.model == "weightfree" and config.checkpoint:
        raise ValueError("--model weightfree takes no --checkpoint")
    if config.steps is not None and config.steps < 1:
        raise ValueError(f"steps must be >= 1, got {config.steps}")


def head_crop(points: np.ndarray, scale: float, size: int) -> np.ndarray:
    """(2, 3) affine portrait -> a square crop of `size` centred on the face mesh, its side `scale`
    times the mesh's larger extent (no rotation: the portrait's own roll is kept)."""
    xy = np.asarray(points, np.float64)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    centre = (lo + hi) / 2
    side = float((hi - lo).max() * scale)
    k = size / side
    return np.array([[k, 0.0, size / 2 - k * centre[0]], [0.0, k, size / 2 - k * centre[1]]])


class PortraitGenerator(GeneratorOperator):
    """What the portrait animators share: the face found and meshed on the portrait, the weight-free
    model or a neural pipeline (named by the config or the checkpoint's model_index.json), the head
    crop or paste-back framing, and the provenance writer."""

    model_name = ""
    weightfree_label = "weightfree"

    def setup(self) -> None:
        super().setup()
        self.detector = face_detector(self.config.faces)
        self.mesher = face_mesher(self.config.landmarks)

    def checkpoint_uri(self) -> str | None:
        if self.config.model in ("auto", "weightfree"):
            return self.config.checkpoint if self.config.model == "auto" else None
        from facefab.models.registry import checkpoint_for

        return self.config.checkpoint or checkpoint_for(self.config.model)

    def load_default(self):
        if self.config.model in self.config.neural:
            return super().load_default()
        self.model_label = "weightfree"
        return self.weightfree()

    def weightfree(self):
        raise NotImplementedError

    def load(self, checkpoint: str):
        from facefab.models.weights import resolve_checkpoint

        folder = resolve_checkpoint(checkpoint, self.ctx.storage_options, self.config.cache_dir)
        neural = self.config.neural
        name = self.config.model if self.config.model in neural else pipeline_name(folder, systems=neural)
        self.model_label = name
        pipeline = pipeline_class(name).from_pretrained(folder, device=self.config.device, dtype=self.config.dtype)
        # a pipeline whose own call is another task's (Face-Adapter swaps) offers this stage's interface
        return pipeline.as_driven() if hasattr(pipeline, "as_driven") else pipeline

    def portrait_face(self, row: dict[str, Any], timer: StageTimer) -> tuple[np.ndarray, list, np.ndarray]:
        """(the portrait (H, W, 3) uint8 RGB, the faces found on it, the chosen face's (478, 3) mesh)."""
        c = self.config
        self.ctx.check_input(row["reference_uri"])
        return reference_face(row["reference_uri"], self.detector, self.mesher, c.faces.min_face_px, c.face_index,
                              timer, self.ctx.storage_options)

    def head_framed(self, image: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The weight-free models' canvas: (the head crop of `size`, the mesh in it with z scaled like x,
        the (2, 3) portrait -> canvas affine), or with paste_back the whole portrait."""
        c = self.config
        if c.paste_back:
            return image, points, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        affine = head_crop(points, c.head_scale, c.size)
        image = cv2.warpAffine(image, affine, (c.size, c.size), flags=cv2.INTER_AREA if affine[0, 0] < 1
                               else cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
        points = points.copy()
        points[:, :2] = points[:, :2] @ affine[:, :2].T + affine[:, 2]
        points[:, 2:] *= affine[0, 0]
        return image, points, affine

    def aligned(self, image: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A neural model's input: (the portrait's aligned crop at the model's size, its mesh in the crop,
        the frame -> crop affine), framed as preprocess frames its training crops."""
        from facefab.face.alignment import similarity_from_landmarks, warp_to_crop

        affine = similarity_from_landmarks(points, self.model.size)
        crop = warp_to_crop(image, affine, self.model.size)
        return crop, (points[:, :2] @ affine[:, :2].T + affine[:, 2]).astype(np.float32), affine

    def framed_output(self, frames, image: np.ndarray, affine: np.ndarray):
        """A neural model's crops resized to `size`, or pasted into the portrait through the inverse alignment."""
        from facefab.face.alignment import paste_back

        c, side = self.config, self.model.size
        if c.paste_back:
            inverse = cv2.invertAffineTransform(affine)
            return (paste_back(image, frame, inverse) for frame in frames)
        interpolation = cv2.INTER_AREA if side > c.size else cv2.INTER_CUBIC
        return (cv2.resize(frame, (c.size, c.size), interpolation=interpolation) for frame in frames)

    def write(self, uri: str, frames, fps: float, audio: np.ndarray | None, audio_rate: int,
              row: dict[str, Any]) -> dict[str, Any]:
        from facefab.media import provenance

        c = self.config
        model = self.weightfree_label if self.model_label == "weightfree" else self.model_label
        return provenance.write_synthetic_video(uri, frames, fps, model=model, job_id=row.get("job_id") or row["id"],
                                                audio=audio, audio_rate=audio_rate, crf=c.crf,
                                                storage_options=self.ctx.storage_options, watermark=c.watermark)


@register_stage
class AnimatePortrait(PortraitGenerator):
    """(reference_uri, audio_uri) -> the talking-head mp4 at `out_uri`."""

    name = "animate_portrait"
    version = "1"
    weightfree_label = "weightfree-portrait"
    inputs = ("reference_uri", "audio_uri")
    outputs = ("out_uri", "model", "checkpoint", "frames", "duration", "face_count", "c2pa", "stage_seconds")
    default_resources = Resources(num_cpus=0.5)
    Config = AnimateConfig

    def setup(self) -> None:
        from facefab.audio.features import load_vad

        super().setup()
        self.vad = load_vad()

    def weightfree(self):
        return WeightFreePortrait(self.config.portrait)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        c, opts, timer = self.config, self.ctx.storage_options, StageTimer()
        self.ctx.check_input(row["audio_uri"])
        image, faces, points = self.portrait_face(row, timer)
        with timer("decode"):
            audio = read_new_audio(row["audio_uri"], FEATURE_RATE, True, c.max_duration, opts)
        check_speech(audio, self.vad, c.vad_threshold, c.min_speech_seconds, f"audio '{row['audio_uri']}'",
                     "nothing to animate")
        n = max(1, round(len(audio) / FEATURE_RATE * c.fps))
        pose = None
        if row.get("pose_uri"):
            self.ctx.check_input(row["pose_uri"])
            with timer("pose"):
                pose = read_pose_series(row["pose_uri"], c.fps, n, self.detector, self.mesher, opts)
        if isinstance(self.model, WeightFreePortrait):
            frames = self._weightfree(image, points, audio, n, pose, timer)
        else:
            with timer("generate"):
                frames = self._neural(image, points, audio, n, pose)
        uri = output_uri(self.ctx, row)
        with timer("render_encode"):
            written = self.write(uri, frames, c.fps, audio, FEATURE_RATE, row)
        return {"out_uri": uri, "model": self.model_label, "checkpoint": self.checkpoint_uri(), "frames": n,
                "duration": round(n / c.fps, 3), "face_count": len(faces), "c2pa": written.get("c2pa"),
                "stage_seconds": timer.merged_into(row)}

    def _weightfree(self, image: np.ndarray, points: np.ndarray, audio: np.ndarray, n: int,
                    pose: np.ndarray | None, timer: StageTimer):
        """Frames (lazily rendered) of the weight-free photo on the head crop or the whole portrait."""
        c = self.config
        image, points, _ = self.head_framed(image, points)
        points = points[:, :2]
        with timer("audio_features"):
            arrays = speech_features(audio, c.fps, n, self.vad, c.vad_threshold)
            speech = as_speech({f"new_{k}": v for k, v in arrays.items()}, "new", c.fps, 8)
        plan = self.model.plan(points, speech, c.fps, image.shape[:2], pose=pose)
        return (self.model.render(plan, t, image, points) for t in range(n))

    def _neural(self, image: np.ndarray, points: np.ndarray, audio: np.ndarray, n: int,
                pose: np.ndarray | None):
        """The pipeline's frames on the aligned crop, resized to `size` or pasted into the portrait."""
        c = self.config
        crop, crop_points, affine = self.aligned(image, points)
        frames = self.model(crop, crop_points, audio.astype(np.float32), c.fps, n, pose=pose, steps=c.steps,
                            guidance_scale=c.guidance_scale, seed=c.seed)
        if len(frames) != n:
            raise OperatorError(f"{self.model_label} returned {len(frames)} frames for {n}")
        return self.framed_output(frames, image, affine)


def pipeline_class(name: str):
    """The TalkingPipeline class of a neural system (the registry's `model` of `name`)."""
    import importlib

    from facefab.models.registry import get

    spec = get(name)
    if not spec.model:
        raise ValueError(f"{spec.title} has no pipeline")
    module, cls = spec.model.split(":")
    return getattr(importlib.import_module(module), cls)


def pipeline_name(folder_or_uri: str, storage_options: dict | None = None, systems: tuple[str, ...] = NEURAL) -> str:
    """Which neural system a checkpoint folder holds: the `_class_name` of its model_index.json."""
    import json

    from facefab.manifests.storage import join_uri, read_bytes

    try:
        index = json.loads(read_bytes(join_uri(folder_or_uri, "model_index.json"), storage_options))
    except FileNotFoundError:
        raise ValueError(f"checkpoint {folder_or_uri} has no model_index.json: name its system with --model "
                         f"({' | '.join(systems)})") from None
    from facefab.models.registry import get

    for name in systems:
        spec = get(name)
        if spec.model and spec.model.split(":")[1] == index.get("_class_name"):
            return name
    raise ValueError(f"checkpoint {folder_or_uri} holds a {index.get('_class_name')!r}, not a pipeline of "
                     f"{[n for n in systems if get(n).model]}")


__all__ = ["NEURAL", "AnimateConfig", "AnimatePortrait", "PortraitGenerator", "PortraitJobConfig", "head_crop",
           "pipeline_class", "pipeline_name", "validate"]

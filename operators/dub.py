"""The dub stages: `DubAnalyze` -> `LipSync` -> `DubScore` (the DAG is `facefab.pipelines.dub`).

- `DubAnalyze` (actor: MediaPipe + silero-vad) does the preprocessing a dub needs with the face
  and audio layers' functions, so a raw catalog needs no separate preprocess run: decode, retime
  the source to the new audio's length (`retime_index`), detect and track faces (the `faces`
  section is preprocess's `FaceTrack.Config`) and pick the speaking track, face mesh (the
  `landmarks` section is `FaceLandmarks.Config`), alignment, and the audio features of the new and
  the original track.
- `LipSync` (generator actor, on a GPU when the model is neural and the cluster has one): the
  weight-free Video-Rewrite style default (`models.lipsync.weightfree`) or MyTalk
  (`models.mytalk`), pasted back with `face.alignment.paste_back`, written to
  ROOT/outputs/<out_name or id>.mp4 at the source size and fps with the new audio (AAC, at the new
  audio's own rate) and the provenance marks (`media.provenance.write_synthetic_video`).
- `DubScore` (actor) measures the written file: lip sync (`face.scores.av_sync_score`) of the
  mouth opening re-detected on the decoded output against the new audio's envelope, the same score
  for the undubbed source, the watermark read back, the container's tag, duration and audio stream.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facefab.face.alignment import points_to_crop
from facefab.face.mesh import NUM_LANDMARKS
from facefab.manifests.storage import join_uri
from facefab.media.arrays import pack_arrays, unpack_arrays
from facefab.media.io import X264_PRESETS
from facefab.models.lipsync.speech import as_speech, speech_features
from facefab.models.lipsync.weightfree import WeightFreeConfig, WeightFreeLipSync

from .base import Operator, OperatorError, Resources, RunContext, register_stage, stable_id
from .faces import FaceTrack, face_detector
from .generator import GeneratorOperator
from .landmarks import FaceLandmarks, face_mesher
from .dub_source import speaking_face_from_preprocess
from .video_faces import decoded_or_streamed, detect_and_track, mesh_tracks, probe_video, select_track

MODELS = ("auto", "weightfree", "mytalk")
LENGTH_MODES = ("pingpong", "loop", "hold", "trim")
TRACK_CHOICES = ("largest", "central")  # or a track number
FEATURE_RATE = 16000  # audio features (mel, VAD, RMS) are computed at 16 kHz mono
OUTPUT_RATES = (16000, 48000)  # the muxed audio keeps its own rate within these bounds
FACE_ARRAYS = ("landmarks", "valid", "bbox", "affine", "inverse")  # the speaking face, per source frame
# the settings a dub's video analysis depends on (its cache key)
ANALYSIS_SETTINGS = ("track", "crop_size", "crop_scale", "align_smooth_window", "vad_threshold", "detect_every",
                     "faces", "landmarks")


@dataclass
class DubConfig(GeneratorOperator.Config):
    """Settings of a dub job (inherits checkpoint, device, dtype, window, overlap, cache_dir)."""

    model: str = field(default="auto", metadata={"help": "auto (mytalk when a checkpoint is configured, "
                                                          "else weightfree) | weightfree | mytalk"})
    track: str = field(default="largest", metadata={"help": "speaking face: largest | central | a track number"})
    length_mode: str = field(default="pingpong", metadata={
        "help": "audio longer than the video: pingpong | loop | hold (freeze) | trim (cut the audio)"})
    max_duration: float | None = field(default=None, metadata={"help": "dub at most this many seconds of audio"})
    bank_seconds: float = field(default=30.0, metadata={"help": "seconds of source analysed as mouth bank"})
    crop_size: int = 512  # aligned crop side the models work in
    crop_scale: float = 1.0  # 1.0: FFHQ framing
    align_smooth_window: int = 5
    vad_threshold: float = 0.5
    max_undubbed_seconds: float = field(default=0.5, metadata={
        "help": "longest stretch of new speech over a visible face the dub cannot follow before the row fails"})
    min_speech_seconds: float = field(default=0.3, metadata={
        "help": "new audio with less voice activity than this fails its row (silence, noise, a click)"})
    audio_rate: int = field(default=0, metadata={"help": "muxed audio rate; 0: the new audio's own (16-48 kHz)"})
    crf: int = 18
    preset: str = field(default="veryfast", metadata={
        "help": "x264 preset of the dubbed videos (on 512 px face crops at crf 18, veryfast encoded about 1.7x "
                "faster than medium for 0.4 dB less PSNR and a file no bigger)"})
    watermark: bool = field(default=True, metadata={"help": "invisible watermark (the synthetic tag is always written)"})
    batch_size: int = 8  # MyTalk renderer frames per batch
    score: bool = field(default=True, metadata={"help": "measure sync and provenance on the written files"})
    max_lag: int = 5  # frames of audio/video lag the sync score searches
    detect_every: int = field(default=3, metadata={"help": "detect faces on every Nth frame; the tracker "
                                                            "interpolates the boxes in between"})
    fuse: bool = field(default=True, metadata={
        "help": "with the weight-free generator, run analysis, lip sync and score as one chain per worker "
                "(the decoded video stays in memory between them)"})
    from_preprocess: str | None = field(default=None, metadata={
        "help": "a `facefab preprocess` ROOT: the speaking face of a video it has comes from its face tracks "
                "instead of being detected and meshed again"})
    # preprocess's own sections: the same fields, flags and meaning as `facefab preprocess`
    faces: FaceTrack.Config = field(default_factory=lambda: FaceTrack.Config(min_track_frames=10))
    landmarks: FaceLandmarks.Config = field(default_factory=FaceLandmarks.Config)
    weightfree: WeightFreeConfig = field(default_factory=WeightFreeConfig)


def validate(config: DubConfig) -> None:
    if config.model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {config.model!r}")
    if config.length_mode not in LENGTH_MODES:
        raise ValueError(f"length_mode must be one of {LENGTH_MODES}, got {config.length_mode!r}")
    if config.track not in TRACK_CHOICES and not config.track.isdigit():
        raise ValueError(f"track must be one of {TRACK_CHOICES} or a track number, got {config.track!r}")
    if config.max_duration is not None and config.max_duration <= 0:
        raise ValueError(f"max_duration must be positive, got {config.max_duration}")
    if config.detect_every < 1:
        raise ValueError(f"detect_every must be >= 1, got {config.detect_every}")
    if config.preset not in X264_PRESETS:
        raise ValueError(f"preset must be one of {X264_PRESETS}, got {config.preset!r}")


# -- small helpers ---------------------------------------------------------------------------------

class StageTimer:
    """Seconds per named stage, accumulated."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def carved_out_of(self, stage: str, enclosing: str):
        """Time `stage` inside a running `enclosing` one, counted for `stage` only."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.add(stage, seconds)
            self.add(enclosing, -seconds)

    def merged_into(self, row: dict[str, Any]) -> str:
        """JSON of the row's earlier `stage_seconds` plus these (operators that both decode add up)."""
        merged = json.loads(row.get("stage_seconds") or "{}")
        for stage, seconds in self.seconds.items():
            merged[stage] = round(merged.get(stage, 0.0) + seconds, 4)
        return json.dumps(merged, sort_keys=True)


def check_speech(audio: np.ndarray, vad, threshold: float, min_seconds: float, what: str,
                 consequence: str = "") -> None:
    """A generator driven by speech needs words: silence, noise or a fraction of a second would be
    marked `ok` with nothing to follow. `audio`: 16 kHz mono; `what` names it in the error."""
    from facefab.audio.features import speech_sample_mask

    speech = float(speech_sample_mask(audio, vad, threshold).sum()) / FEATURE_RATE
    if speech < min_seconds:
        kind = "is silent" if not np.any(np.abs(audio) > 1e-4) else "has no speech the voice detector accepts"
        raise OperatorError(f"{what} {kind}: {speech:.2f} s of speech in {len(audio) / FEATURE_RATE:.2f} s "
                            f"(at least {min_seconds:g} s needed, --min-speech-seconds)"
                            + (f": {consequence}" if consequence else ""))


def retime_index(n_source: int, n_out: int, mode: str) -> np.ndarray:
    """Source frame of each output frame. Shorter output: the first frames. Longer: ping-pong
    (0..T-1, T-2..1, 0..), loop, hold (freeze the last frame), or trim (stop at T frames)."""
    t = np.arange(n_out)
    if n_out <= n_source or mode == "trim":
        return t[:n_source]
    if mode == "pingpong" and n_source > 1:
        period = 2 * (n_source - 1)
        k = t % period
        return np.where(k < n_source, k, period - k)
    if mode == "loop":
        return t % n_source
    return np.minimum(t, n_source - 1)


def output_uri(ctx: RunContext, row: dict[str, Any], suffix: str = ".mp4") -> str:
    name = row.get("out_name") or row["id"]
    return join_uri(ctx.out_root, "outputs", name if name.lower().endswith(suffix) else f"{name}{suffix}")


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def read_new_audio(uri: str, sample_rate: int, mono: bool, max_duration: float | None,
                   storage_options: dict[str, Any] | None) -> np.ndarray:
    """The new audio, with a clear row error when it is missing or unreadable."""
    from facefab.media import MediaError, read_audio

    try:
        audio = read_audio(uri, sample_rate=sample_rate, mono=mono, end=max_duration, storage_options=storage_options)
    except MediaError as e:
        raise OperatorError(f"new audio: {e}") from e
    if audio.shape[-1] < sample_rate // 10:
        raise OperatorError(f"new audio '{uri}' is shorter than 0.1 s")
    return audio


# -- faces -----------------------------------------------------------------------------------------

def longest_run(mask: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of True in a 1-D mask; (0, 0) when there is none."""
    padded = np.concatenate([[0], np.asarray(mask, np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    if len(edges) == 0:
        return 0, 0
    starts, ends = edges[0::2], edges[1::2]
    k = int(np.argmax(ends - starts))
    return int(starts[k]), int(ends[k] - starts[k])


def faces_seen_in(detections: list[list], bbox: np.ndarray, every: int) -> np.ndarray:
    """(T,) whether a face is seen within the track's region (the union of its boxes, grown by
    half): on detected frames (every `every`th and the last), a detection centred there; between
    two of them, both."""
    lo, hi = np.nanmin(bbox[:, :2], axis=0), np.nanmax(bbox[:, 2:], axis=0)
    margin = 0.5 * (hi - lo)
    lo, hi = lo - margin, hi + margin

    def inside(d) -> bool:
        centre = (d.bbox[:2] + d.bbox[2:]) / 2
        return bool((centre >= lo).all() and (centre <= hi).all())

    n = len(detections)
    sampled = sorted({*range(0, n, every), n - 1})
    hit = {i: any(inside(d) for d in detections[i]) for i in sampled}
    seen = np.zeros(n, bool)
    for a, b in zip(sampled, sampled[1:]):
        seen[a + 1:b] = hit[a] and hit[b]
    seen[sampled] = [hit[i] for i in sampled]
    return seen


# -- the operators ---------------------------------------------------------------------------------

@register_stage
class DubAnalyze(Operator):
    """(video_uri, audio_uri) -> retimed frame index, speaking track, landmarks, alignment, and
    the audio features of both tracks (`_dub`), plus fps/size/duration/face_fraction columns."""

    name = "dub_analyze"
    version = "1"
    inputs = ("video_uri", "audio_uri")
    outputs = ("_dub", "fps", "width", "height", "num_frames", "duration", "source_frames", "face_fraction",
               "undubbed_speech", "track_count", "speech_ratio", "source_speech_ratio", "analysis", "stage_seconds")
    stateful = True
    default_resources = Resources(num_cpus=1.0)
    Config = DubConfig

    def setup(self) -> None:
        from facefab.audio.features import load_vad
        self.detector = face_detector(self.config.faces)
        self.mesher = face_mesher(self.config.landmarks)
        self.vad = load_vad()

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        c, opts, timer = self.config, self.ctx.storage_options, StageTimer()
        self.ctx.check_input(row["video_uri"])
        self.ctx.check_input(row["audio_uri"])
        with timer("audio_decode"):
            new_audio = read_new_audio(row["audio_uri"], FEATURE_RATE, True, c.max_duration, opts)
        with timer("speech_check"):
            check_speech(new_audio, self.vad, c.vad_threshold, c.min_speech_seconds, f"new audio '{row['audio_uri']}'")
        info = probe_video(row["video_uri"], opts)
        fps = info.fps
        wanted = round(len(new_audio) / FEATURE_RATE * fps)
        # the analysed window: whole multiples of the bank, so dubs of one video into several languages
        # (audio of slightly different lengths) share one analysis through the cache
        window = math.ceil(max(wanted / fps, c.bank_seconds) / c.bank_seconds) * c.bank_seconds
        video, analysis = self._video_analysis(row["video_uri"], info, window, timer)
        face = {k: video[k] for k in FACE_ARRAYS}
        seen, count, n = video["seen"], int(video["track_count"]), len(video["seen"])
        own = {k: v for k, v in video.items() if k.startswith("own_")}  # the source's speech features, if any
        index = retime_index(n, wanted, c.length_mode)
        with timer("audio_features"):
            new = speech_features(new_audio, fps, len(index), self.vad, c.vad_threshold)
        undubbed = self._check_coverage(new["vad"], seen[index] & ~face["valid"][index], fps)
        arrays = {**face, "index": index.astype(np.int32), **{f"new_{k}": v for k, v in new.items()}, **own}
        return {
            "_dub": pack_arrays(**arrays),
            "fps": fps, "width": info.width, "height": info.height,
            "num_frames": len(index), "duration": round(len(index) / fps, 4), "source_frames": n,
            "face_fraction": round(float(face["valid"][index].mean()), 4), "undubbed_speech": undubbed,
            "track_count": count,
            "speech_ratio": round(float(new["vad"].mean()), 4),
            "source_speech_ratio": round(float(own["own_vad"].mean()), 4) if own else None,
            "analysis": analysis, "stage_seconds": timer.merged_into(row),
        }

    def _video_analysis(self, uri: str, info, seconds: float, timer: StageTimer
                        ) -> tuple[dict[str, np.ndarray], str]:
        """(what the dub needs of the source video's first `seconds` (all of it when shorter): the speaking
        face's arrays (FACE_ARRAYS), `seen`, `track_count`, and the own speech features (own_*) when it has
        sound; where they came from: "preprocess" | "cache" | "analysed").
        With `from_preprocess`, the face comes from that ROOT's tracks of the video when it has them.
        Otherwise cached under ROOT/cache/dub_analysis/, keyed by the video's content (size and modification
        stamp or ETag), the window and the analysis settings: one video dubbed into many languages is
        analysed once."""
        from facefab.manifests.storage import exists, join_uri
        from facefab.media import local_path
        from facefab.media.arrays import load_npz, save_npz
        from facefab.media.frame_cache import content_identity

        c, opts = self.config, self.ctx.storage_options
        whole = seconds >= info.duration
        if c.from_preprocess:
            n = info.num_frames if whole else min(info.num_frames, round(seconds * info.fps))
            with timer("analysis_preprocess"):
                found = speaking_face_from_preprocess(c.from_preprocess, uri, info.fps, n,
                                                      (info.width, info.height), c.track, opts)
            if found is not None:
                with timer("landmarks"):
                    face = self._aligned(found.pop("landmarks"), found.pop("valid"), found.pop("bbox"), uri)
                with local_path(uri, opts) as path:
                    own = self._own_speech(path, info, n, timer)
                return {**face, **found, **own}, "preprocess"
        settings = {name: getattr(c, name) for name in ANALYSIS_SETTINGS}
        key = stable_id("dub-analysis", uri, content_identity(uri, opts), "whole" if whole else seconds,
                        json.dumps(settings, sort_keys=True, default=lambda o: o.__dict__))
        cached = join_uri(self.ctx.out_root, "cache", "dub_analysis", f"{key}.npz")
        if exists(cached, opts):
            with timer("analysis_cache"):
                try:
                    return load_npz(cached, opts), "cache"
                except (OSError, ValueError):
                    pass  # a damaged entry: analysed again and rewritten below
        with local_path(uri, opts) as path:
            frames = decoded_or_streamed(path, info, None if whole else seconds, timer)
            with timer("faces"):
                track, count, seen = self._speaking_track(frames, uri, (info.width, info.height), info.fps)
                n = len(seen)
            with timer("landmarks"):
                face = self._face_arrays(frames, n, track)
            del frames
            own = self._own_speech(path, info, n, timer)
        video = {**face, "seen": seen, "track_count": np.int32(count), **own}
        save_npz(cached, opts, **video)
        return video, "analysed"

    def _own_speech(self, path: str, info, n: int, timer: StageTimer) -> dict[str, np.ndarray]:
        """The source's own speech features (own_*) over its first `n` frames; none without sound."""
        from facefab.media import read_audio

        if not info.has_audio:
            return {}
        with timer("audio_features"):
            own_audio = read_audio(path, sample_rate=FEATURE_RATE, end=n / info.fps)
            # the source's own speech fits the per-video regression, which reads no formants
            own = speech_features(own_audio, info.fps, n, self.vad, self.config.vad_threshold, formants=False)
        return {f"own_{k}": v for k, v in own.items()}

    def _speaking_track(self, frames, uri: str, frame_wh: tuple[int, int], fps: float):
        """(track, number of tracks, seen) of the frames (an array or a stream, read once); seen:
        per frame, whether a face was detected within the speaking track's region (near frames
        included, as detection runs on every `detect_every`th)."""
        every = self.config.detect_every
        tracks, detections = detect_and_track(frames, self._detect, every, self.config.faces, fps, uri)
        track = select_track(tracks, self.config.track, frame_wh)
        return track, len(tracks), faces_seen_in(detections, track.bbox, every)

    def _check_coverage(self, speech: np.ndarray, undubbed_face: np.ndarray, fps: float) -> float:
        """Seconds of new speech over a visible face the dub cannot follow; a longer run than
        `max_undubbed_seconds` fails the row (the original mouth would show under the new words)."""
        missed = speech.astype(bool) & undubbed_face
        start, length = longest_run(missed)
        if length / fps > self.config.max_undubbed_seconds:
            raise OperatorError(
                f"{length / fps:.1f} s of the new speech (output {start / fps:.1f}-{(start + length) / fps:.1f} s) "
                f"falls on frames where the face is visible but could not be tracked or meshed, so the original "
                f"mouth would show ({missed.sum() / fps:.1f} s in all; at most {self.config.max_undubbed_seconds:g} s "
                f"in a row is allowed, --max-undubbed-seconds)")
        return round(float(missed.sum() / fps), 3)

    def _detect(self, frame: np.ndarray) -> list:
        from facefab.face.detection import detect_faces

        return detect_faces(frame[None], self.detector, min_face_px=self.config.faces.min_face_px)[0]

    def _face_arrays(self, frames, n: int, track) -> dict[str, np.ndarray]:
        """Per source frame (n of them): box, landmarks (NaN outside the track or where the mesh
        failed), valid, and frame <-> crop affines (edge-extended outside the track)."""
        c = self.config
        frame_index = track.frame_index
        (meshed,) = mesh_tracks(frames, [track], self.mesher, c.faces.max_gap_frames)
        landmarks = np.full((n, NUM_LANDMARKS, 3), np.nan, np.float32)
        landmarks[frame_index] = meshed.landmarks
        valid = np.zeros(n, bool)
        valid[frame_index] = meshed.found
        bbox = np.full((n, 4), np.nan, np.float32)
        bbox[frame_index] = track.bbox
        return self._aligned(landmarks, valid, bbox, f"a face tracked over {len(frame_index)} frames")

    def _aligned(self, landmarks: np.ndarray, valid: np.ndarray, bbox: np.ndarray, what: str) -> dict[str, np.ndarray]:
        """The face arrays with their frame <-> crop affines (edge-extended before the first and after the
        last frame with a mesh)."""
        from facefab.face.alignment import track_alignment

        c = self.config
        found = np.flatnonzero(valid)
        if not len(found):
            raise OperatorError(f"{what}: the face mesh found no landmarks on the speaking face")
        edge = np.clip(np.arange(len(valid)), found[0], found[-1])
        affine, inverse = track_alignment(landmarks[found[0]:found[-1] + 1], valid[found[0]:found[-1] + 1],
                                          c.crop_size, c.crop_scale, c.align_smooth_window)
        return {"landmarks": landmarks, "valid": valid, "bbox": bbox, "affine": affine[edge - found[0]],
                "inverse": inverse[edge - found[0]]}


@register_stage
class LipSync(GeneratorOperator):
    """Analysed row -> the dubbed mp4 at `out_uri` (see the module docstring)."""

    name = "lip_sync"
    version = "1"
    model_name = "mytalk"
    inputs = ("video_uri", "audio_uri", "_dub", "fps", "width", "height")
    outputs = ("out_uri", "model", "checkpoint", "fit", "fit_r", "mean_run", "c2pa", "stage_seconds")
    Config = DubConfig

    def checkpoint_uri(self) -> str | None:
        return None if self.config.model == "weightfree" else super().checkpoint_uri()

    def load(self, checkpoint: str):
        from facefab.models.mytalk.pipeline import MyTalkPipeline

        c = self.config
        return MyTalkPipeline.from_pretrained(checkpoint, self.ctx.storage_options, device=self.device,
                                              dtype=self.dtype, cache_dir=c.cache_dir, window=c.window,
                                              overlap=c.overlap, batch_size=c.batch_size)

    def load_default(self):
        if self.config.model == "mytalk":
            return super().load_default()  # raises: MyTalk has no weight-free form
        return WeightFreeLipSync(self.config.weightfree)

    @property
    def weight_free(self) -> bool:
        return isinstance(self.model, WeightFreeLipSync)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        from facefab.media import MediaError, local_path
        from facefab.media.frame_cache import indexed_frames

        opts, timer = self.ctx.storage_options, StageTimer()
        d = unpack_arrays(row["_dub"])
        fps, index = float(row["fps"]), d["index"]
        points = points_to_crop(d["landmarks"], d["affine"]).astype(np.float32)
        audio, rate = self._mux_audio(row, len(index) / fps)
        uri = output_uri(self.ctx, row)
        with local_path(row["video_uri"], opts) as path:
            with timer("decode"):  # the analysed frames: all of them, or blocks on demand (long sources)
                try:
                    frames = indexed_frames(path, len(d["valid"]), int(row["width"]), int(row["height"]))
                except MediaError as e:
                    raise OperatorError(f"source video changed since the analysis: {e}") from e
            with timer("synthesis"):
                crop_alpha, extra = (self._weight_free(d, points, frames, fps, timer) if self.weight_free
                                     else self._neural(d, points, frames, fps))
            with timer("encode"):
                written = self._write(uri, self._pasted(frames, index, d, crop_alpha, timer), fps, audio, rate, row)
        timer.add("encode", -timer.seconds.get("render", 0.0))  # rendering ran inside the encoder's loop
        return {"out_uri": uri, "model": "weightfree" if self.weight_free else "mytalk",
                "checkpoint": None if self.weight_free else self.checkpoint_uri(), "c2pa": written.get("c2pa"),
                **extra, "stage_seconds": timer.merged_into(row)}

    def _weight_free(self, d, points, frames, fps, timer: StageTimer):
        from facefab.face.alignment import warp_to_crop

        c = self.config
        context = self.model.config.context
        own = as_speech(d, "own", fps, context) if "own_mel" in d else None
        new = as_speech(d, "new", fps, context)
        plan = self.model.plan(points, d["valid"], c.crop_size, own, new, d["index"], fps,
                               bank_frames=round(c.bank_seconds * fps))
        with timer.carved_out_of("decode", "synthesis"):  # the crops of the mouths shown (at most bank_seconds)
            mouths = {int(s): warp_to_crop(frames[s], d["affine"][s], c.crop_size)
                      for s in self.model.mouth_sources(plan)}

        def crop_alpha(t: int, s: int):
            return self.model.render(plan, t, mouths, points, frames[s], d["affine"][s], s, c.crop_size)

        return crop_alpha, {"fit": plan.fit, "fit_r": _finite(plan.fit_r), "mean_run": round(float(plan.mean_run), 2)}

    def _neural(self, d, points, frames, fps):
        from facefab.face.alignment import warp_to_crop

        index, size = d["index"], self.config.crop_size
        context = (self.model.motion.config.mel_window - 1) // 2
        mel = as_speech(d, "new", fps, context).mel_windows
        # one crop per output frame, made when the renderer asks: a long dub is never held whole
        stream = self.model.generate_stream(lambda t: warp_to_crop(frames[index[t]], d["affine"][index[t]], size),
                                            size, points[index], mel)
        return _InOrder(iter(stream)), {"fit": None, "fit_r": None, "mean_run": None}

    @staticmethod
    def _pasted(frames, index, d, crop_alpha, timer: StageTimer):
        """Output frames: the retimed source with the generated lower face pasted where the
        speaking face has landmarks; other frames pass through unchanged."""
        from facefab.face.alignment import paste_back

        for t, s in enumerate(index):
            if not d["valid"][s]:
                yield frames[s]
                continue
            start = time.perf_counter()
            crop, alpha = crop_alpha(t, s)
            out = paste_back(frames[s], crop, d["inverse"][s], alpha)
            timer.add("render", time.perf_counter() - start)
            yield out

    def _mux_audio(self, row: dict[str, Any], seconds: float) -> tuple[np.ndarray, int]:
        """The new audio at its own rate (kept between 16 and 48 kHz), mono or stereo, cut to the
        output's length."""
        from facefab.media import probe

        info = probe(row["audio_uri"], self.ctx.storage_options)
        rate = self.config.audio_rate or int(np.clip(info.audio_sample_rate or FEATURE_RATE, *OUTPUT_RATES))
        audio = read_new_audio(row["audio_uri"], rate, info.audio_channels != 2, seconds, self.ctx.storage_options)
        return audio, rate

    def _write(self, uri, frames, fps, audio, rate, row) -> dict[str, Any]:
        from facefab.media import provenance

        return provenance.write_synthetic_video(uri, frames, fps, model="weightfree" if self.weight_free else "mytalk",
                                                job_id=row.get("job_id") or row["id"], audio=audio, audio_rate=rate,
                                                crf=self.config.crf, preset=self.config.preset,
                                                storage_options=self.ctx.storage_options,
                                                watermark=self.config.watermark)


class _InOrder:
    """crop_alpha(t, s) over a stream with one item per output frame: the paste loop asks in
    order and only for frames with a face, so the renders of the others are drawn and dropped."""

    def __init__(self, stream):
        self.stream, self.next_t = stream, 0

    def __call__(self, t: int, s: int):
        for _ in range(t - self.next_t):
            next(self.stream)
        self.next_t = t + 1
        return next(self.stream)


@register_stage
class DubScore(Operator):
    """Measures the written file: `sync_output` / `sync_source` (max-lag Pearson r of mouth opening
    vs the new audio's RMS envelope, for the dubbed output and for the undubbed source frames),
    `watermark_found`, `synthetic_tag`, `output_duration`, `output_has_audio`."""

    name = "dub_score"
    version = "1"
    inputs = ("out_uri", "_dub")
    outputs = ("sync_output", "sync_output_lag", "sync_source", "watermark_found", "synthetic_tag",
               "output_duration", "output_has_audio", "stage_seconds")
    stateful = True
    default_resources = Resources(num_cpus=1.0)
    Config = DubConfig

    WATERMARK_FRAMES = 100  # read from the output's start (verify_file's default)

    def setup(self) -> None:
        self.mesher = face_mesher(self.config.landmarks)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        from facefab.face.parsing import mouth_open_ratio
        from facefab.face.scores import av_sync_score
        from facefab.media import probe, read_metadata
        from facefab.media.provenance import read_tag

        opts, timer = self.ctx.storage_options, StageTimer()
        d = unpack_arrays(row["_dub"])
        index, envelope = d["index"], d["new_rms"]
        with timer("score"):
            marks, watermark = self._landmarks(row["out_uri"], d["bbox"][index])
            output_open = mouth_open_ratio(marks)
            sync_out, lag = av_sync_score(output_open, envelope, self.config.max_lag)
            sync_src, _ = av_sync_score(mouth_open_ratio(d["landmarks"][index]), envelope, self.config.max_lag)
            info = probe(row["out_uri"], opts)
            tag = read_tag(read_metadata(row["out_uri"], opts))
        return {"sync_output": _finite(sync_out), "sync_output_lag": int(lag), "sync_source": _finite(sync_src),
                "watermark_found": bool(watermark.found), "synthetic_tag": tag is not None,
                "output_duration": round(info.duration, 4), "output_has_audio": info.has_audio,
                "stage_seconds": timer.merged_into(row)}

    def _landmarks(self, uri: str, boxes: np.ndarray):
        """Landmarks of the written output's frames within the analysed boxes (one per output
        frame), decoded a chunk at a time so a long dub is never held whole; plus the watermark
        read from its first WATERMARK_FRAMES frames on the way."""
        from facefab.media import iter_frames
        from facefab.media.provenance import WatermarkReader

        reader = WatermarkReader()

        def frames():
            chunks = iter_frames(uri, storage_options=self.ctx.storage_options)
            for t, frame in enumerate(f for chunk in chunks for f in chunk):
                if t < self.WATERMARK_FRAMES:
                    reader.add(frame)
                yield frame

        out, _ = self.mesher.track(frames(), boxes)
        if not reader.frames:
            raise OperatorError(f"the written output '{uri}' has no frames")
        return out, reader.result()

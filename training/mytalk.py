"""MyTalk training systems for `facefab train mytalk-motion` / `mytalk-render` (the TrainingSystem
contract of facefab.training.systems; neither evaluates on held-out clips).

Both stages read ONE preprocess manifest row (crop_uri: aligned crops mp4 with 16 kHz audio;
frames_uri: per-frame `landmarks` in source pixels + `inverse_transform` crop->frame;
audio_features_uri: AudioFeatures .npz, optional: without it the mel is computed from crop_uri's audio
with AudioFeatures' defaults). Landmarks are moved into the crop and normalised by its side.

Samples (fixed shapes; T = `window`, W = mel_window, R = num_ref_frames, K = 37, N = num_refs,
H = image_size):

- mytalk-motion: mel (T,W,80) f32, ref_landmarks (R,136) f32 (iBUG-68 x,y of R random frames of the
  clip), offsets (T,K,2) f32 (lip/jaw points minus their mean over the R frames), weight (T,) f32
  (0 for frames without landmarks). One sample per `window` frames of the clip (`stride` frames
  apart when that option is set: overlapping windows).
- mytalk-render: masked (3,H,H), sketch (3,H,H), mask (1,H,H), refs (N,3,H,H), target (3,H,H), all
  uint8; `samples_per_clip` frames spread over the clip, references at least `min_ref_gap` frames away.

Both stages export into one folder: out_dir/motion/ and out_dir/renderer/ (+ model_index.json),
which `MyTalkPipeline.from_pretrained(out_dir)` loads; an export is merged into what out_dir holds
(facefab.training.export.merge_into). Under `facefab train` each run's own export is
CKPT_ROOT/<run>/export/, and both systems declare `export_group = "mytalk"`, so the runtime also
merges every export into CKPT_ROOT/mytalk/: train the two stages with the same --out and that folder
is the checkpoint `facefab dub --model mytalk --checkpoint CKPT_ROOT/mytalk` loads.

Presets (`--preset`): "paper" (the defaults) and "tiny" (`config.tiny()`, seconds on a CPU). The
sample-building options are `--system-options` JSON: mytalk-motion {window, stride, seed, velocity_weight},
mytalk-render {samples_per_clip, min_ref_gap, seed, gradient_weight}. The two stages are the two
systems; neither has sub-stages (`--stage`).
"""

from __future__ import annotations

import logging
import tempfile
from typing import ClassVar

import numpy as np
import torch

from facefab.face.smoothing import fill_missing
from facefab.models.mytalk.config import motion_config, paper, render_config, tiny
from facefab.models.mytalk.motion import MOTION_POINTS, MyTalkMotion, motion_loss, normalised_68
from facefab.models.mytalk.pipeline import MOTION_FOLDER, RENDERER_FOLDER, save_pipeline_part
from facefab.models.mytalk.renderer import (
    MyTalkRenderer,
    feather_px,
    frame_inputs,
    lip_box,
    render_loss,
    to_model_inputs,
    warp_box,
)
from facefab.models.shared.speech import audio_mel_windows
from facefab.operators.track_row import read_frame_table

from .export import merge_into
from .systems import PIPELINES, SYSTEMS, TrainingSystemBase, sample_rng

log = logging.getLogger(__name__)


def _merge(defaults: dict, overrides: dict | None, cls) -> dict:
    import inspect

    merged = {**defaults, **(overrides or {})}
    unknown = set(merged) - set(list(inspect.signature(cls.__init__).parameters)[1:])
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config key(s) {sorted(unknown)}")
    return merged


EXPORT_GROUP = "mytalk"  # CKPT_ROOT/mytalk/: both stages' exports, one MyTalkPipeline folder


def _fps(row: dict, storage_options: dict | None) -> float:
    if row.get("fps"):
        return float(row["fps"])
    from facefab.media import probe

    return float(probe(row["crop_uri"], storage_options).fps)


def clip_points(row: dict, storage_options: dict | None,
                crop_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T,68,2) normalised crop landmarks (missing frames interpolated), valid (T,) and the clip
    frame numbers (T,) of a row's track."""
    track = read_frame_table(row["frames_uri"], storage_options)
    if crop_size is None:
        from facefab.media import probe

        crop_size = int(row.get("crop_size") or probe(row["crop_uri"], storage_options).width)
    points, valid = fill_missing(normalised_68(track.landmarks_in_crop(row["frames_uri"]), crop_size))
    return points, valid, track.frame_index


def clip_mel_windows(row: dict, storage_options: dict | None, frame_index: np.ndarray, mel_window: int) -> np.ndarray:
    """(T,W,80) mel windows of the track's frames (clip frame numbers `frame_index`): from
    audio_features_uri (per clip frame, re-centred to W), else from the crop video's own audio."""
    context = (mel_window - 1) // 2
    if row.get("audio_features_uri"):
        from facefab.media.arrays import load_npz

        feats = load_npz(row["audio_features_uri"], storage_options)
        mel, index = feats["mel"], feats["frame_index_map"]
        centre = index[np.minimum(frame_index, len(index) - 1), index.shape[1] // 2].astype(np.int64)
        return mel[np.clip(centre[:, None] + np.arange(-context, context + 1), 0, len(mel) - 1)]
    from facefab.media import read_audio

    audio = read_audio(row["crop_uri"], sample_rate=16000, storage_options=storage_options)
    return audio_mel_windows(audio, len(frame_index), _fps(row, storage_options), mel_window)


class _MyTalkPart(TrainingSystemBase):
    """What the two stages share: a model class, its config (the one the samples must match, e.g. a
    preset's num_ref_frames / image_size), sample options given as --system-options, and the
    pipeline part (subfolder) they export."""

    model_cls: ClassVar[type]
    part: ClassVar[str]
    OPTIONS: ClassVar[tuple[str, ...]]
    export_group = EXPORT_GROUP
    config: dict

    def default_config(self) -> dict:
        return dict(self.config)

    def configure(self, model_config: dict | None = None, stage: str = "", options: dict | None = None) -> None:
        if stage:
            raise ValueError(f"{self.name} has no stages (got {stage!r}); the MyTalk stages are the systems "
                             f"mytalk-motion and mytalk-render")
        if model_config is not None:
            self.config = _merge(self.config, model_config, self.model_cls)
        unknown = set(options or {}) - set(self.OPTIONS)
        if unknown:
            raise ValueError(f"unknown {self.name} option(s) {sorted(unknown)}; known: {list(self.OPTIONS)}")
        for key, value in (options or {}).items():
            setattr(self, key, type(getattr(self, key))(value))

    def build_model(self, model_config: dict) -> torch.nn.Module:
        return self.model_cls(**_merge(self.config, model_config, self.model_cls))

    def export(self, model, out_dir: str) -> None:
        """save_pipeline_part's layout, written into an empty folder and merged into `out_dir`."""
        with tempfile.TemporaryDirectory(prefix="facefab-export-") as tmp:
            save_pipeline_part(model, tmp, self.part)
            merge_into(tmp, out_dir, None)


@SYSTEMS.register("mytalk-motion")
class MyTalkMotionSystem(_MyTalkPart):
    """Stage 1: audio features + identity landmarks -> lip/jaw landmark offsets."""

    name = "mytalk-motion"
    presets = {"paper": paper()["motion"], "tiny": tiny()["motion"]}
    model_cls = MyTalkMotion
    part = MOTION_FOLDER
    OPTIONS = ("window", "stride", "seed", "velocity_weight")

    def __init__(self, config: dict | None = None, *, tiny: bool = False, window: int = 50, seed: int = 0,
                 velocity_weight: float = 1.0, stride: int = 0):
        self.config = _merge(motion_config(tiny), config, MyTalkMotion)
        self.window, self.seed, self.velocity_weight = window, seed, velocity_weight
        self.stride = stride  # frames between sample starts; 0: `window` (no overlap)

    def make_samples(self, row: dict, storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        points, valid, frame_index = clip_points(row, storage_options)
        mel = clip_mel_windows(row, storage_options, frame_index, self.config["mel_window"])
        n, t = min(len(points), len(mel)), self.window
        if n < t:
            log.warning("%s: %d frames, fewer than one window of %d: no motion samples", row.get("id"), n, t)
            return []
        rng, r = sample_rng(row, self.seed), self.config["num_ref_frames"]
        known = np.flatnonzero(valid[:n])
        samples = []
        for start in range(0, n - t + 1, self.stride or t):
            weight = valid[start:start + t].astype(np.float32)
            if weight.mean() < 0.5:
                continue
            refs = points[rng.choice(known, size=r, replace=len(known) < r)]
            template = refs[:, MOTION_POINTS].mean(axis=0)
            samples.append({
                "mel": np.ascontiguousarray(mel[start:start + t], np.float32),
                "ref_landmarks": refs.reshape(r, -1).astype(np.float32),
                "offsets": (points[start:start + t, MOTION_POINTS] - template).astype(np.float32),
                "weight": weight,
            })
        return samples

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        dtype = next(model.parameters()).dtype
        pred = model(batch["mel"].to(dtype), batch["ref_landmarks"].to(dtype))
        return motion_loss(pred, batch["offsets"], batch.get("weight"), self.velocity_weight)


@SYSTEMS.register("mytalk-render")
class MyTalkRenderSystem(_MyTalkPart):
    """Stage 2: masked frame + landmark sketch + reference lip crops -> lip region RGB + alpha."""

    name = "mytalk-render"
    presets = {"paper": paper()["renderer"], "tiny": tiny()["renderer"]}
    model_cls = MyTalkRenderer
    part = RENDERER_FOLDER
    OPTIONS = ("samples_per_clip", "min_ref_gap", "seed", "gradient_weight")

    def __init__(self, config: dict | None = None, *, tiny: bool = False, samples_per_clip: int = 16,
                 min_ref_gap: int = 10, seed: int = 0, gradient_weight: float = 1.0):
        self.config = _merge(render_config(tiny), config, MyTalkRenderer)
        self.samples_per_clip, self.min_ref_gap = samples_per_clip, min_ref_gap
        self.seed, self.gradient_weight = seed, gradient_weight

    def make_samples(self, row: dict, storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        from facefab.media import read_frames

        c = self.config
        crops = read_frames(row["crop_uri"], storage_options=storage_options)
        points, valid, _ = clip_points(row, storage_options, crop_size=crops.shape[1])
        n = min(len(crops), len(points))
        points, valid = points[:n, MOTION_POINTS], valid[:n]
        known = np.flatnonzero(valid)
        if len(known) < c["num_refs"] + 1:
            log.warning("%s: %d frames with landmarks, too few for %d references", row.get("id"), len(known),
                        c["num_refs"])
            return []
        rng = sample_rng(row, self.seed)
        box = lip_box(points[known], c["box_scale"])
        frames = known[np.round(np.linspace(0, len(known) - 1, min(self.samples_per_clip, len(known)))).astype(int)]
        boxes = {}

        def box_of(t):
            if t not in boxes:
                boxes[t] = warp_box(crops[t], box, c["image_size"])
            return boxes[t]

        samples = []
        for t in frames:
            far = known[np.abs(known - t) >= min(self.min_ref_gap, max(1, n // 4))]
            pool = far if len(far) >= c["num_refs"] else known[known != t]
            refs = rng.choice(pool, size=c["num_refs"], replace=len(pool) < c["num_refs"])
            other = rng.choice(pool)  # its hull joins the mask, as the target's does at inference
            own = box.to_box(points[t])
            item = frame_inputs(box_of(t), own, [own, box.to_box(points[other])],
                                np.stack([box_of(r) for r in refs]), c["mask_dilation"], c["feather"])
            item["target"] = box_of(t).transpose(2, 0, 1).copy()
            samples.append(item)
        return samples

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        param = next(model.parameters())
        x = to_model_inputs(batch, param.device)
        cast = {k: v.to(param.dtype) for k, v in x.items()}
        rgb, alpha = model(cast["masked"], cast["sketch"], cast["mask"], cast["refs"])
        feather = feather_px(self.config["feather"], x["mask"].shape[-1])
        return render_loss(rgb, alpha, x["masked"], x["target"], x["mask"], feather, self.gradient_weight)


__all__ = ["MyTalkMotionSystem", "MyTalkRenderSystem", "clip_mel_windows", "clip_points"]


PIPELINES.register("mytalk")(("mytalk-motion", "mytalk-render"))

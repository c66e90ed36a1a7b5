"""GAIA as `facefab train gaia`: two systems trained one after the other into CKPT_ROOT/gaia/.

- `gaia-vae` (stage 1): GaiaVAE on frame pairs of one clip: the appearance encoder reads frame j, the
  motion encoder the landmark image of frame i, the decoder redraws frame i. Loss: multi-scale L1
  (the paper's perceptual and adversarial losses are left out) + kl_weight x the motion latent's KL.
  Held-out evaluation: reconstruction PSNR / L1 (the clip's first frame as the appearance).
- `gaia-motion` (stage 2): GaiaMotionDiffusion on `window`-frame stretches of a clip: the frozen VAE's
  motion encoder turns every frame's landmark image into its motion latent (in the loss, on the train
  worker); the model learns to denoise them (DDIM schedule, v-prediction by default) from the frames'
  log-mel windows, a random reference frame's motion latent and the frames' head pose. Speech is dropped
  with probability uncond_rate (classifier-free guidance), pose with pose_drop_rate (so the pipeline
  runs without a pose and the model draws its own head motion).

Both export into one folder (facefab.models.gaia.pipeline layout: vae/, motion/ + scheduler/,
model_index.json), merged into CKPT_ROOT/gaia/ (`export_group`), which `GaiaPipeline.from_pretrained`
loads once both ran:

    facefab train gaia --data ROOT --out CKPT --preset tiny                  # both stages -> CKPT/gaia/
    facefab train gaia-vae --data ROOT --out CKPT --preset tiny              # -> CKPT/gaia/vae/
    facefab train gaia-motion --data ROOT --out CKPT --preset tiny           # -> CKPT/gaia/motion/

gaia-motion needs the trained VAE: the option `vae` names a folder holding it (a GAIA pipeline folder
with vae/, or a GaiaVAE folder; local or s3://); without it, the run's own CKPT_ROOT/gaia/vae/ (what
gaia-vae exported with the same --out), found through the Ray Train run's storage on the worker.

Samples (S = the VAE's image_size, T = the motion model's window, W = mel_window; landmarks are the
478-point mesh in S-pixel crop coordinates, frames without one interpolated):
- gaia-vae: appearance (S,S,3) uint8, target (S,S,3) uint8, points (478,2) f32 (the target's mesh).
- gaia-motion: points (T,478,2) f32 and reference_points (478,2) f32 (normalised by the crop side; the
  VAE's size applies in the loss), mel (T,W,80) f32, pose (T,3) f32 yaw/pitch/roll degrees relative to
  the reference frame (as the pipeline's pose input is relative to the portrait: animate's pose series
  starts at 0), has_pose (1,) f32 (0: the clip has no pose column), weight (T,) f32 (0 for frames whose
  landmarks were interpolated).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from facefab.face.smoothing import fill_missing
from facefab.models.gaia.config import motion_config, vae_config
from facefab.models.gaia.landmarks import landmark_batch
from facefab.models.gaia.motion_diffusion import GaiaMotionDiffusion
from facefab.models.gaia.pipeline import MOTION_FOLDER, SCHEDULER_FOLDER, VAE_FOLDER, save_part
from facefab.models.gaia.vae import GaiaVAE
from facefab.models.shared.latents import to_unit
from facefab.models.shared.sampling import make_scheduler, noisy_batch

from .dicts import deep_merge
from .export import merge_into
from .facevid2vid import psnr
from .mytalk import _merge, clip_mel_windows
from .systems import PIPELINES, SYSTEMS, TrainingSystemBase, sample_rng

log = logging.getLogger(__name__)

EXPORT_GROUP = "gaia"  # CKPT_ROOT/gaia/: both stages' exports, one GaiaPipeline folder

VAE_OPTIONS: dict[str, Any] = {
    "pairs_per_clip": 16,   # (appearance, target) pairs drawn from one clip per pass over the data
    "min_gap": 5,           # frames at least between the two frames of a pair (fewer in short clips)
    "kl_weight": 1e-3,      # on the motion latent's KL per number
    "eval_pairs": 8,        # held-out targets per clip for evaluate()
    "max_frames": 250,      # frames decoded per clip
    "seed": None,           # None: fresh pairs every pass; an int: the same pairs every pass (reproducible)
}
MOTION_OPTIONS: dict[str, Any] = {
    "samples_per_clip": 8,  # window-frame stretches drawn from one clip per pass over the data
    "uncond_rate": 0.1,     # speech dropped (classifier-free guidance)
    "pose_drop_rate": 0.5,  # pose dropped (the model learns to draw its own head motion)
    "max_frames": 250,
    "scheduler": {},        # overrides of facefab.models.shared.sampling.DEFAULT_SCHEDULER
    "vae": "",              # the trained GaiaVAE (see the module docstring); empty: CKPT_ROOT/gaia/vae/
    "seed": None,           # None: fresh windows every pass; an int: the same windows every pass
}


# -- reading a clip ------------------------------------------------------------------------------------

def clip_mesh(row: dict, storage_options: dict | None, size: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """A row's track: mesh (T,478,2) f32 in `size`-pixel crop coordinates (frames without landmarks
    interpolated), valid (T,), the clip frame numbers (T,), pose (T,3) yaw/pitch/roll degrees
    (interpolated; None when no frame has one)."""
    from facefab.media import probe
    from facefab.operators.track_row import read_frame_table

    for key in ("crop_uri", "frames_uri"):
        if not row.get(key):
            raise ValueError(f"row {row.get('id')!r} has no {key} (run preprocess with the align stage)")
    track = read_frame_table(row["frames_uri"], storage_options)
    crop_size = int(row.get("crop_size") or probe(row["crop_uri"], storage_options).width)
    mesh = track.landmarks_in_crop(row["frames_uri"])[..., :2] * np.float32(size / crop_size)
    mesh, valid = fill_missing(mesh)
    pose = track.pose[:, :3]
    pose = fill_missing(pose)[0] if np.isfinite(pose).all(axis=1).any() else None
    return mesh, valid, track.frame_index, pose


def _read_crops(row: dict, storage_options: dict | None, size: int, max_frames: int) -> np.ndarray:
    from facefab.media import probe, read_frames

    fps = float(row.get("fps") or probe(row["crop_uri"], storage_options).fps)
    return read_frames(row["crop_uri"], end=max_frames / fps if max_frames else None, size=(size, size),
                       storage_options=storage_options)


class _GaiaStage(TrainingSystemBase):
    """What both stages share: a model config (a preset's: the samples follow it), options, the group."""

    model_cls: ClassVar[type]
    defaults: ClassVar[dict[str, Any]]
    export_group = EXPORT_GROUP

    def __init__(self) -> None:
        self.config: dict[str, Any] = self.default_config()
        self.options: dict[str, Any] = dict(self.defaults)

    def configure(self, model_config: dict | None = None, stage: str = "", options: dict | None = None) -> None:
        if stage:
            raise ValueError(f"{self.name} has no stages (got {stage!r}); the GAIA stages are the systems "
                             f"gaia-vae and gaia-motion")
        unknown = set(options or {}) - set(self.defaults)
        if unknown:
            raise ValueError(f"unknown {self.name} option(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        if model_config is not None:
            self.config = _merge(self.default_config(), model_config, self.model_cls)
        self.options = deep_merge(self.defaults, options or {})

    def build_model(self, model_config: dict) -> torch.nn.Module:
        return self.model_cls(**_merge(self.config, model_config, self.model_cls))


@SYSTEMS.register("gaia-vae")
class GaiaVAESystem(_GaiaStage):
    """Stage 1: appearance (frame j) + motion (landmark image of frame i) -> frame i."""

    name = "gaia-vae"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": vae_config(), "tiny": vae_config(tiny=True)}
    model_cls = GaiaVAE
    defaults = VAE_OPTIONS

    def default_config(self) -> dict:
        return vae_config()

    def make_samples(self, row: dict, storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        clip = self._load_clip(row, storage_options)
        if clip is None:
            return []
        crops, mesh, known = clip
        rng = sample_rng(row, self.options["seed"])
        gap = min(int(self.options["min_gap"]), max(1, (known[-1] - known[0]) // 4))
        samples = []
        for target in rng.choice(known, size=int(self.options["pairs_per_clip"])):
            far = known[np.abs(known - target) >= gap]
            appearance = rng.choice(far if len(far) else known[known != target])
            samples.append(self._sample(crops, mesh, int(appearance), int(target)))
        return samples

    def make_eval_samples(self, row: dict, storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        """The clip's first frame with landmarks as the appearance, evenly spaced later frames as targets."""
        clip = self._load_clip(row, storage_options)
        if clip is None:
            return []
        crops, mesh, known = clip
        targets = known[np.round(np.linspace(1, len(known) - 1, min(int(self.options["eval_pairs"]),
                                                                    len(known) - 1))).astype(int)]
        return [self._sample(crops, mesh, int(known[0]), int(t)) for t in targets]

    def loss(self, model: GaiaVAE, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        param = next(model.parameters())
        appearance, target, landmarks = self._inputs(model, batch, param)
        out, posterior = model(appearance, landmarks)
        out, target = out.float(), target.float()
        reconstruction = sum(F.l1_loss(F.avg_pool2d(out, s), F.avg_pool2d(target, s)) if s > 1
                             else F.l1_loss(out, target) for s in (1, 2, 4))
        kl = posterior.kl().float().mean() / model.motion_dim
        loss = reconstruction + float(self.options["kl_weight"]) * kl
        return loss, {"l1": float(F.l1_loss(out, target).detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def evaluate(self, model: GaiaVAE, samples: list[dict[str, np.ndarray]], batch_size: int = 8) -> dict[str, float]:
        """Reconstruction PSNR (dB) and L1 of held-out frames from the clip's first frame's appearance."""
        if not samples:
            return {}
        was_training = model.training
        model.eval()
        param = next(model.parameters())
        values, l1 = [], []
        try:
            for i in range(0, len(samples), batch_size):
                batch = {k: torch.from_numpy(np.stack([s[k] for s in samples[i:i + batch_size]])) for k in samples[0]}
                appearance, target, landmarks = self._inputs(model, batch, param)
                out = model(appearance, landmarks, sample_posterior=False)[0].float()
                values.append(psnr((out + 1) / 2, (target.float() + 1) / 2))
                l1.append((out.clamp(-1, 1) - target.float()).abs().flatten(1).mean(1) / 2)
        finally:
            model.train(was_training)
        return {"psnr": float(torch.cat(values).mean()), "l1": float(torch.cat(l1).mean())}

    def export(self, model: GaiaVAE, out_dir: str) -> None:
        with tempfile.TemporaryDirectory(prefix="facefab-export-") as tmp:
            save_part(model, tmp, VAE_FOLDER)
            merge_into(tmp, out_dir, None)

    # -- helpers ----------------------------------------------------------------------------------

    def _load_clip(self, row: dict, storage_options: dict | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        size = int(self.config["image_size"])
        crops = _read_crops(row, storage_options, size, int(self.options["max_frames"]))
        mesh, valid, _, _ = clip_mesh(row, storage_options, size)
        n = min(len(crops), len(mesh))
        known = np.flatnonzero(valid[:n])
        if len(known) < 2:
            log.warning("%s: %d frames with landmarks: too few for gaia-vae pairs", row.get("id"), len(known))
            return None
        return crops[:n], mesh[:n], known

    @staticmethod
    def _sample(crops: np.ndarray, mesh: np.ndarray, appearance: int, target: int) -> dict[str, np.ndarray]:
        return {"appearance": crops[appearance], "target": crops[target],
                "points": np.ascontiguousarray(mesh[target], np.float32)}

    @staticmethod
    def _inputs(model: GaiaVAE, batch: dict[str, torch.Tensor], param: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = model.config.image_size
        return (to_unit(batch["appearance"], param.device, param.dtype), to_unit(batch["target"], param.device,
                param.dtype), landmark_batch(batch["points"], size, param.device, param.dtype))


@SYSTEMS.register("gaia-motion")
class GaiaMotionSystem(_GaiaStage):
    """Stage 2: speech + pose + the reference's motion latent -> the frames' motion latents (diffusion)."""

    name = "gaia-motion"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": motion_config(), "tiny": motion_config(tiny=True)}
    model_cls = GaiaMotionDiffusion
    defaults = MOTION_OPTIONS

    def __init__(self) -> None:
        super().__init__()
        self._vae: GaiaVAE | None = None  # loaded on the train worker, never pickled

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_vae": None}

    def default_config(self) -> dict:
        return motion_config()

    def configure(self, model_config: dict | None = None, stage: str = "", options: dict | None = None) -> None:
        super().configure(model_config, stage, options)
        make_scheduler(self.options["scheduler"])  # a bad override fails here, before Ray starts
        source = self.options["vae"]
        if source and "://" not in source and not os.path.isdir(source):
            raise ValueError(f"gaia-motion: the VAE folder {source!r} does not exist (option vae: a GAIA "
                             "checkpoint with vae/, e.g. CKPT_ROOT/gaia after `facefab train gaia-vae`)")
        self._vae = None

    def make_samples(self, row: dict, storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        clip = self._load_clip(row, storage_options)
        if clip is None:
            return []
        rng = sample_rng(row, self.options["seed"])
        t = int(self.config["window"])
        starts = rng.integers(0, len(clip["weight"]) - t + 1, int(self.options["samples_per_clip"]))
        known = np.flatnonzero(clip["weight"])
        samples = []
        for start in starts:
            window, reference = slice(int(start), int(start) + t), rng.choice(known)
            samples.append({"points": clip["mesh"][window], "reference_points": clip["mesh"][reference],
                            "mel": clip["mel"][window], "pose": clip["pose"][window] - clip["pose"][reference],
                            "has_pose": clip["has_pose"], "weight": clip["weight"][window]})
        return [{k: np.ascontiguousarray(v, np.float32) for k, v in s.items()} for s in samples]

    def loss(self, model: GaiaMotionDiffusion, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        param = next(model.parameters())
        device = param.device
        latents, reference = self.motion_latents(batch["points"], batch["reference_points"], device)
        scheduler = make_scheduler(self.options["scheduler"])
        noisy, timesteps, target = noisy_batch(scheduler, latents)
        b = len(latents)
        keep_speech = (torch.rand(b) >= float(self.options["uncond_rate"])).float()
        keep_pose = (torch.rand(b) >= float(self.options["pose_drop_rate"])).float() * batch["has_pose"][:, 0].cpu()
        prediction = model(noisy.to(param.dtype), timesteps, batch["mel"].to(device), reference.to(param.dtype),
                           batch["pose"].to(device), keep_speech.to(device), keep_pose.to(device))
        error = ((prediction.float() - target.float()) ** 2).mean(-1)
        weight = batch["weight"].to(device).float()
        loss = (error * weight).sum() / weight.sum().clamp_min(1.0)
        return loss, {"latent_std": float(latents.std())}

    @torch.no_grad()
    def motion_latents(self, points: torch.Tensor, reference_points: torch.Tensor, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen VAE's motion latents: (B,T,D) of the frames' meshes (B,T,478,2), (B,D) of the references'
        (meshes in crop coordinates normalised by the crop side)."""
        vae = self.vae_on(device)
        size = vae.config.image_size
        b, t = points.shape[:2]
        frames = vae.encode_motion(landmark_batch(points.reshape(b * t, *points.shape[2:]) * size, size, device))
        reference = vae.encode_motion(landmark_batch(reference_points * size, size, device))
        return frames.mode().reshape(b, t, -1), reference.mode().flatten(1)

    def vae_on(self, device: torch.device) -> GaiaVAE:
        """The trained GaiaVAE (fp32, frozen), loaded once per process."""
        if self._vae is None:
            from facefab.models.weights import load_model

            with vae_folder(self.options["vae"], self.group_uri, self.storage_options) as folder:
                vae = load_model(GaiaVAE, folder, device="cpu", dtype="fp32")
            if vae.motion_dim != int(self.config["motion_dim"]):
                raise ValueError(f"gaia-motion: the VAE makes {vae.motion_dim}-number motion latents, this model "
                                 f"takes {self.config['motion_dim']}: train both stages with the same --preset")
            self._vae = vae.requires_grad_(False)
        return self._vae.to(device)

    def export(self, model: GaiaMotionDiffusion, out_dir: str) -> None:
        with tempfile.TemporaryDirectory(prefix="facefab-export-") as tmp:
            save_part(model, tmp, MOTION_FOLDER)
            save_part(make_scheduler(self.options["scheduler"]), tmp, SCHEDULER_FOLDER)
            merge_into(tmp, out_dir, None)

    def _load_clip(self, row: dict, storage_options: dict | None) -> dict[str, np.ndarray] | None:
        mesh, valid, frame_index, pose = clip_mesh(row, storage_options, 1)  # the VAE's size applies in loss()
        n = min(len(mesh), int(self.options["max_frames"]) or len(mesh))
        mel = clip_mel_windows(row, storage_options, frame_index[:n], int(self.config["mel_window"]))
        n = min(n, len(mel))
        if n < int(self.config["window"]):
            log.warning("%s: %d frames, fewer than one window of %d: no gaia-motion samples", row.get("id"), n,
                        self.config["window"])
            return None
        return {"mesh": mesh[:n], "weight": valid[:n].astype(np.float32), "mel": mel[:n],
                "pose": np.zeros((n, 3), np.float32) if pose is None else pose[:n],
                "has_pose": np.array([0.0 if pose is None else 1.0], np.float32)}


@contextlib.contextmanager
def vae_folder(source: str, group_uri: str | None = None, storage_options: dict | None = None) -> Iterator[str]:
    """A local GaiaVAE folder while the context lasts: `source` (a GAIA pipeline folder with vae/, or a
    GaiaVAE folder; local or remote), or, when empty, the run's export group folder (CKPT_ROOT/gaia,
    which the runtime hands the system as `group_uri`), where `facefab train gaia-vae` exported it."""
    from facefab.models.weights import CheckpointError, resolve_checkpoint

    if not source:
        if not group_uri:
            raise FileNotFoundError(
                "gaia-motion needs the trained GAIA VAE: train gaia-vae first with the same --out (or `facefab "
                "train gaia`, both stages), or name it with --system-options '{\"vae\": \"CKPT_ROOT/gaia\"}'")
        source, what = group_uri, "this run's CKPT_ROOT/gaia: train gaia-vae first with the same --out"
    else:
        what = "give the folder `facefab train gaia-vae` exported into (CKPT_ROOT/gaia)"
    try:
        local = resolve_checkpoint(source, storage_options)
    except CheckpointError as e:
        raise FileNotFoundError(f"gaia-motion: {source} holds no GaiaVAE ({e}); {what}") from None
    for folder in (os.path.join(local, VAE_FOLDER), local):
        if os.path.isfile(os.path.join(folder, "config.json")):
            yield folder
            return
    raise FileNotFoundError(f"gaia-motion: {source} holds no GaiaVAE (no vae/config.json or config.json); {what}")


__all__ = ["GaiaMotionSystem", "GaiaVAESystem", "clip_mesh", "vae_folder"]


PIPELINES.register("gaia")(("gaia-vae", "gaia-motion"))

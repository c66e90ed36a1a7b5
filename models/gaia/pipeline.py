"""GAIA inference: one portrait + speech (+ an optional head-pose series) -> a talking-head clip.

The reference crop gives the appearance latent (the VAE's appearance encoder) and, through its
landmark image, the reference motion latent; the motion diffusion model samples the motion latents
of every frame from the speech (DDIM, classifier-free guidance on speech; a clip longer than the
model's window is sampled in overlapping windows whose predictions are averaged every step,
`facefab.models.shared.sampling.sample_overlapping`); the VAE's decoder draws each frame from the
reference's appearance and that frame's motion latent.

Checkpoint folder, as `facefab train gaia` writes it (CKPT_ROOT/gaia/):

    model_index.json     {"_class_name": "GaiaPipeline", "vae": [...], "motion": [...], "scheduler": [...]}
    vae/                 GaiaVAE (config.json + safetensors)          <- gaia-vae
    motion/              GaiaMotionDiffusion                           <- gaia-motion
    scheduler/           DDIMScheduler config the motion model trained with
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler

from ..shared.latents import to_uint8, to_unit
from ..shared.sampling import guided, initial_noise, make_scheduler, sample_overlapping
from ..shared.speech import audio_mel_windows
from ..weights import CheckpointError, load_model, pick_device, pick_dtype, resolve_checkpoint
from .landmarks import landmark_batch
from .motion_diffusion import GaiaMotionDiffusion
from .vae import GaiaVAE

INDEX_FILE = "model_index.json"
VAE_FOLDER, MOTION_FOLDER, SCHEDULER_FOLDER = "vae", "motion", "scheduler"
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 2.0


def save_part(part: Any, folder: str, name: str) -> None:
    """`part` (a model or the scheduler) saved as the subfolder `name` of the local `folder`, and
    listed in its model_index.json (a training stage's export: one part, merged with the others)."""
    part = getattr(part, "module", part)  # DDP / DeepSpeed wrappers
    target = os.path.join(folder, name)
    if isinstance(part, DDIMScheduler):
        part.save_pretrained(target)
        entry = ["diffusers", type(part).__name__]
    else:
        part.save_pretrained(target, safe_serialization=True)
        entry = ["facefab.models.gaia", type(part).__name__]
    path = os.path.join(folder, INDEX_FILE)
    index = {"_class_name": "GaiaPipeline"}
    if os.path.exists(path):
        with open(path) as f:
            index.update(json.load(f))
    index[name] = entry
    with open(path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)


def check_parts(vae: GaiaVAE, motion: GaiaMotionDiffusion) -> None:
    if motion.config.motion_dim != vae.motion_dim:
        raise ValueError(f"the motion model takes {motion.config.motion_dim}-number motion latents, the VAE makes "
                         f"{vae.motion_dim}: train gaia-motion on this VAE (same --preset)")


class GaiaPipeline:
    """GaiaVAE + GaiaMotionDiffusion + DDIM: the talking-pipeline interface of facefab.models.shared.talking."""

    def __init__(self, vae: GaiaVAE, motion: GaiaMotionDiffusion, scheduler: DDIMScheduler | None = None, *,
                 steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE, overlap: int | None = None,
                 decode_batch: int = 16):
        check_parts(vae, motion)
        self.vae, self.motion = vae.eval(), motion.eval()
        self.scheduler = scheduler or make_scheduler()
        self.steps, self.guidance_scale, self.decode_batch = steps, guidance_scale, decode_batch
        self.overlap = motion.config.window // 4 if overlap is None else overlap

    @property
    def size(self) -> int:
        return int(self.vae.config.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.motion.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.motion.parameters()).dtype

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "auto", dtype: str = "auto", **kwargs) -> GaiaPipeline:
        local = resolve_checkpoint(folder)
        for sub, system in ((VAE_FOLDER, "gaia-vae"), (MOTION_FOLDER, "gaia-motion")):
            if not os.path.isdir(os.path.join(local, sub)):
                raise CheckpointError(f"GAIA checkpoint {folder} has no {sub}/ folder (train it with "
                                      f"`facefab train {system}`, or both stages with `facefab train gaia`)")
        device = pick_device(device)
        dtype = pick_dtype(dtype, device)
        vae = load_model(GaiaVAE, local, device=device, dtype=dtype, subfolder=VAE_FOLDER)
        motion = load_model(GaiaMotionDiffusion, local, device=device, dtype=dtype, subfolder=MOTION_FOLDER)
        scheduler_dir = os.path.join(local, SCHEDULER_FOLDER)
        scheduler = DDIMScheduler.from_pretrained(scheduler_dir) if os.path.isdir(scheduler_dir) else None
        return cls(vae, motion, scheduler, **kwargs)

    def save_pretrained(self, folder: str) -> None:
        for part, name in ((self.vae, VAE_FOLDER), (self.motion, MOTION_FOLDER), (self.scheduler, SCHEDULER_FOLDER)):
            save_part(part, folder, name)

    # -- the steps -------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_reference(self, reference: np.ndarray, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(appearance latent (1,Ca,h,w), motion latent (1,D)) of the reference crop and its mesh."""
        if reference.shape[:2] != (self.size, self.size):
            raise ValueError(f"reference must be a {self.size}x{self.size} aligned crop, got {reference.shape}")
        appearance = self.vae.encode_appearance(to_unit(reference[None], self.device, self.dtype))
        landmarks = landmark_batch(np.asarray(points, np.float32)[None], self.size, self.device, self.dtype)
        return appearance, self.vae.encode_motion(landmarks).mode().flatten(1)

    @torch.no_grad()
    def sample_motion(self, reference_motion: torch.Tensor, mel: np.ndarray, pose: np.ndarray | None = None, *,
                      steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(T, D) motion latents for mel windows (T, W, n_mels) and an optional pose (T, 3) in degrees."""
        steps = steps or self.steps
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        device, dtype = self.device, self.dtype
        frames = len(mel)
        mel_t = torch.as_tensor(np.asarray(mel, np.float32), device=device, dtype=dtype)[None]
        pose_t = None if pose is None else torch.as_tensor(np.asarray(pose, np.float32), device=device,
                                                            dtype=dtype)[None]
        if pose_t is not None and pose_t.shape[1] != frames:
            raise ValueError(f"pose has {pose_t.shape[1]} frames for {frames}")
        guide = scale != 1.0
        keep = torch.tensor([1.0, 0.0] if guide else [1.0], device=device)

        def predict(window: torch.Tensor, t: torch.Tensor, span: slice) -> torch.Tensor:
            x = window[..., 0, 0].transpose(1, 2).expand(len(keep), -1, -1)  # (N, w, D)
            pose_w = None if pose_t is None else pose_t[:, span].expand(len(keep), -1, -1)
            out = self.motion(x, t, mel_t[:, span].expand(len(keep), -1, -1, -1),
                              reference_motion.expand(len(keep), -1), pose_w, keep_speech=keep)
            out = guided(out[:1], out[1:], scale) if guide else out
            return out.transpose(1, 2)[..., None, None]

        noise = initial_noise((1, self.vae.motion_dim, frames, 1, 1), seed, device, dtype, self.scheduler)
        window = self.motion.config.window
        latents = sample_overlapping(predict, self.scheduler, noise, steps, window,
                                     min(self.overlap, window - 1), progress)
        return latents[0, :, :, 0, 0].transpose(0, 1)

    @torch.no_grad()
    def decode(self, appearance: torch.Tensor, motion: torch.Tensor) -> np.ndarray:
        """(T, S, S, 3) uint8 frames of one appearance latent and (T, D) motion latents."""
        frames = []
        for chunk in motion.split(self.decode_batch):
            frames.append(to_uint8(self.vae.decode(appearance.expand(len(chunk), -1, -1, -1), chunk)))
        return np.concatenate(frames)

    def __call__(self, reference: np.ndarray, points: np.ndarray, audio: np.ndarray, fps: float, num_frames: int, *,
                 pose: np.ndarray | None = None, steps: int | None = None, guidance_scale: float | None = None,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """reference (S,S,3) uint8 aligned crop, points (478,2) its mesh in crop pixels, audio float32 16 kHz
        mono, pose (num_frames,3) yaw/pitch/roll degrees relative to the reference's own pose (animate's
        pose series: 0 at its first frame), or None: the model's own head motion -> (num_frames,S,S,3) uint8."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        appearance, reference_motion = self.encode_reference(reference, points)
        mel = audio_mel_windows(np.asarray(audio, np.float32), num_frames, fps, self.motion.config.mel_window)
        motion = self.sample_motion(reference_motion, mel, pose, steps=steps, guidance_scale=guidance_scale, seed=seed,
                                    progress=progress)
        return self.decode(appearance, motion)


__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "MOTION_FOLDER",
    "SCHEDULER_FOLDER",
    "VAE_FOLDER",
    "GaiaPipeline",
    "check_parts",
    "save_part",
]

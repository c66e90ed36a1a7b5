"""Diffusion sampling and training targets shared by the talking-head generators.

- `make_scheduler(config)`: a DDIM scheduler (Hallo's defaults: v-prediction, zero terminal SNR,
  trailing timesteps); the same config trains (`add_noise`, `training_target`) and samples.
- `guided(cond, uncond, scale)`: classifier-free guidance.
- `sample_overlapping`: V-Express' long-video sampling: every step denoises overlapping context
  windows of the whole sequence and averages the overlapping predictions, so windows agree.
- `sample_inpainted`: one window in which some frames are known (Follow-Your-Emoji's in-between windows):
  every step the known frames' latents are reset to the known clean latents noised to that step.
- `sample_continued`: Hallo's: windows one after another, each conditioned on the last `motion_frames`
  clean latents of the one before (the first on the reference repeated).

A `predict` callable returns the model's (guided) output for a latent window at timestep t; the
samplers own the noise, the window bookkeeping and the scheduler steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler

from .windows import window_spans

DEFAULT_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear",
    "clip_sample": False, "steps_offset": 1, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing", "set_alpha_to_one": False,
}
Progress = Callable[[int, int], None] | None


def make_scheduler(config: dict | None = None) -> DDIMScheduler:
    return DDIMScheduler(**{**DEFAULT_SCHEDULER, **(config or {})})


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the model learns to predict: the noise (epsilon) or the velocity (v-prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def noisy_batch(scheduler, latents: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, target) for one training step: a random timestep per sample."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    timesteps = timesteps.to(latents.device)
    return scheduler.add_noise(latents, noise, timesteps), timesteps, training_target(scheduler, latents, noise,
                                                                                     timesteps)


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def initial_noise(shape: tuple[int, ...], seed: int, device, dtype, scheduler) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(seed))
    return (torch.randn(shape, generator=generator) * scheduler.init_noise_sigma).to(device=device, dtype=dtype)


def sample_overlapping(predict: Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor], scheduler,
                       latents: torch.Tensor, steps: int, window: int, overlap: int,
                       progress: Progress = None) -> torch.Tensor:
    """Denoise `latents` (B, C, F, h, w) from noise; `predict(window_latents, t, frames)` gets the
    frames slice of each context window (window frames, consecutive windows sharing >= overlap)."""
    scheduler.set_timesteps(steps, device=latents.device)
    frames = latents.shape[2]
    spans = window_spans(frames, min(window, frames), min(overlap, max(0, min(window, frames) - 1)))
    for i, t in enumerate(scheduler.timesteps):
        total = torch.zeros_like(latents)
        count = torch.zeros(frames, device=latents.device, dtype=latents.dtype)
        for start, end in spans:
            sl = slice(start, end)
            total[:, :, sl] += predict(scheduler.scale_model_input(latents[:, :, sl], t), t, sl)
            count[sl] += 1
        latents = scheduler.step(total / count.view(1, 1, -1, 1, 1), t, latents).prev_sample
        if progress:
            progress(i + 1, len(scheduler.timesteps))
    return latents


def sample_inpainted(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler, latents: torch.Tensor,
                     steps: int, known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
                     seed: int = 0, progress: Progress = None) -> torch.Tensor:
    """Denoise one window `latents` (B, C, F, h, w) from noise; `predict(window_latents, t)`. Frames where
    `known_mask` (F,) is true are held at `known` (B, C, F, h, w; clean latents) noised to the current
    timestep with one fixed noise drawn from `seed` (masked-frame inpainting), and returned exactly clean."""
    scheduler.set_timesteps(steps, device=latents.device)
    timesteps = scheduler.timesteps
    hold = known is not None and known_mask is not None and bool(known_mask.any())
    if hold:
        mask = known_mask.to(latents.device).view(1, 1, -1, 1, 1)
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(known.shape, generator=generator).to(known)

        def held(x: torch.Tensor, t) -> torch.Tensor:
            noised = scheduler.add_noise(known, noise, torch.as_tensor([int(t)] * len(known), device=known.device))
            return torch.where(mask, noised.to(x.dtype), x)

        latents = held(latents, timesteps[0])
    for i, t in enumerate(timesteps):
        latents = scheduler.step(predict(scheduler.scale_model_input(latents, t), t), t, latents).prev_sample
        if hold:
            latents = held(latents, timesteps[i + 1]) if i + 1 < len(timesteps) else \
                torch.where(mask, known.to(latents.dtype), latents)
        if progress:
            progress(i + 1, len(timesteps))
    return latents


def sample_continued(predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, slice], torch.Tensor], scheduler,
                     shape: tuple[int, int, int, int, int], first_motion: torch.Tensor, steps: int, window: int,
                     seed: int, progress: Progress = None) -> torch.Tensor:
    """Generate (B, C, F, h, w) latents window by window. `predict(window_latents, t, motion, frames)`
    gets `motion` (B, C, k, h, w): `first_motion` for the first window, then the last k latents the
    previous window produced, and `frames`, the window's frame slice (the last one may run past F:
    repeat the last frame's conditioning). Each window draws its own noise from `seed` + its index."""
    b, c, frames, h, w = shape
    device, dtype = first_motion.device, first_motion.dtype
    k = first_motion.shape[2]
    out, motion = [], first_motion
    starts = list(range(0, frames, window))
    for n, start in enumerate(starts):
        sl = slice(start, start + window)
        scheduler.set_timesteps(steps, device=device)
        # every window is `window` frames long (the model's length); the last one is cut after
        x = initial_noise((b, c, window, h, w), seed + n, device, dtype, scheduler)
        for t in scheduler.timesteps:
            pred = predict(scheduler.scale_model_input(x, t), t, motion, sl)
            x = scheduler.step(pred, t, x).prev_sample
        out.append(x[:, :, : min(frames, sl.stop) - start])
        motion = torch.cat([motion, x], dim=2)[:, :, -k:] if k else motion
        if progress:
            progress(n + 1, len(starts))
    return torch.cat(out, dim=2)


__all__ = ["DEFAULT_SCHEDULER", "guided", "initial_noise", "make_scheduler", "noisy_batch", "sample_continued",
           "sample_inpainted", "sample_overlapping", "training_target"]

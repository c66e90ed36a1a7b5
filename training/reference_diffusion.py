"""What the reference-image video-diffusion training systems share (MegActor; the pattern of
Follow-Your-Emoji's and V-Express' systems): a pipeline config with a `latent` section, stages that pick
parameter groups to train, an `init` pipeline folder a later stage continues from, clips of aligned crops with
their meshes, and the noised-latent batch of one step.

- `ReferenceDiffusionSystem`: TrainingSystemBase + configure (stage, options, config check, the VAE a
  "vae" config needs), the codec built where used (the instance stays picklable), parameter groups
  (`groups`: name -> predicate on (part, rest of the name, the model)), `init` loading.
  (A preprocess row's aligned crops and meshes: training.follow_your_emoji.load_aligned_clip.)
- `pick_reference(rng, valid, start, end, margin)`: a reference frame away from the target window.
- `encode_frames(codec, images, device)`: (B, F, S, S, 3) uint8 -> (B, C, F, h, w) latents.
- `noised(scheduler, latents, offset)`: (noisy latents, timesteps, training target) of one step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from facefab.models.shared.latents import PixelCodec, VaeCodec, to_unit
from facefab.models.shared.sampling import training_target

from .dicts import deep_merge
from .systems import TrainingSystemBase

log = logging.getLogger(__name__)

# the options every such system has (a system's default_options extend them)
COMMON_OPTIONS: dict[str, Any] = {
    "num_frames": 1,          # frames per sample (the stage sets it)
    "train": [],              # parameter groups trained (the stage sets it)
    "samples_per_clip": 8,
    "seed": None,             # None: fresh samples every pass; an int: the same samples every pass (reproducible)
    "max_frames": 250,        # frames decoded per clip
    "reference_margin": 30,   # frames between the reference and the target window
    "uncond_ratio": 0.1,      # batches denoised without the reference (classifier-free guidance)
    "noise_offset": 0.05,
    "init": "",               # a pipeline folder of the system (local or s3://) the run starts from
    "vae": "",                # SD's AutoencoderKL folder, for configs with latent.type "vae"
}
Group = Callable[[str, str, torch.nn.Module], bool]  # (part, the name inside the part, the model) -> trained


class ReferenceDiffusionSystem(TrainingSystemBase):
    """The configurable part of a reference-image diffusion system. A subclass sets `name`, `presets`,
    `stages`, `export_group`, `default_stage`, `default_options` (COMMON_OPTIONS and its own), `groups`,
    and implements `default_config`, `check_config`, `fresh_model` and `read_init` (config, parts of an
    init folder)."""

    default_stage: ClassVar[str] = ""
    default_options: ClassVar[dict[str, Any]] = {}
    groups: ClassVar[dict[str, Group]] = {}
    init_keys: ClassVar[tuple[str, ...]] = ("unet", "latent")  # config sections an init folder must share

    def __init__(self) -> None:
        self.config: dict[str, Any] = self.default_config()
        self.stage = self.default_stage
        self.options: dict[str, Any] = deep_merge(self.default_options, self.stages[self.default_stage])
        self._codec = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_codec": None, "_clip": None}

    # -- what a subclass provides ------------------------------------------------------------------

    def default_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def check_config(self, config: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def fresh_model(self, config: dict[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    def read_init(self, folder: str) -> tuple[dict[str, Any], dict[str, torch.nn.Module]]:
        raise NotImplementedError

    # -- the contract ------------------------------------------------------------------------------------

    def configure(self, model_config: dict[str, Any] | None = None, stage: str = "",
                  options: dict[str, Any] | None = None) -> None:
        stage = stage or self.default_stage
        if stage not in self.stages:
            raise ValueError(f"{self.name} has no stage {stage!r}; stages: {list(self.stages)}")
        unknown = set(options or {}) - set(self.default_options)
        if unknown:
            raise ValueError(f"unknown {self.name} option(s) {sorted(unknown)}; known: {sorted(self.default_options)}")
        config = self.check_config(dict(model_config) if model_config is not None else self.default_config())
        merged = deep_merge(deep_merge(self.default_options, self.stages[stage]), options or {})
        if config["latent"]["type"] == "vae" and not merged["vae"]:
            raise ValueError("this config encodes with SD's VAE: give its folder as the option "
                             "--system-options '{\"vae\": \"DIR\"}' (or use pixel latents, e.g. --preset tiny)")
        if int(merged.get("num_frames", 1)) < 1:
            raise ValueError(f"num_frames must be >= 1, got {merged['num_frames']}")
        self.config, self.stage, self.options, self._codec = config, stage, merged, None

    def build_model(self, model_config: dict[str, Any]) -> torch.nn.Module:
        config = self.check_config(dict(model_config))
        net = self.fresh_model(config)
        if self.options["init"]:
            self._load_init(net, config)
        elif self.stage != self.default_stage:
            log.warning("%s stage %s starts from fresh parts: without the option init (the %s stage's pipeline "
                        "folder) its export replaces what that stage trained", self.name, self.stage,
                        self.default_stage)
        trained = self.trainable_names(net, list(self.options["train"]))
        for name, param in net.named_parameters():
            param.requires_grad_(name in trained)
        return net

    # -- helpers -------------------------------------------------------------------------------------------

    def trainable_names(self, net: torch.nn.Module, groups: list[str]) -> set[str]:
        """Names of `net`'s parameters (`<part>.<rest>`) that any of `groups` trains."""
        unknown = set(groups) - set(self.groups)
        if unknown:
            raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; known: {list(self.groups)}")
        picks = [self.groups[g] for g in groups]
        return {name for name, _ in net.named_parameters()
                if any(pick(*name.split(".", 1), net) for pick in picks)}

    def clip_on(self, device: torch.device):
        """The frozen CLIP image encoder of the option `image_encoder` (a local or s3 folder), loaded once
        per process."""
        if getattr(self, "_clip", None) is None:
            from transformers import CLIPVisionModelWithProjection

            from facefab.models.weights import resolve_checkpoint

            path = resolve_checkpoint(self.options["image_encoder"])
            self._clip = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True).eval()
            self._clip.requires_grad_(False)
        return self._clip.to(device)

    @staticmethod
    def clip_input(images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [0, 1] as CLIP's image encoder takes them: 224 px, normalised."""
        from facefab.models.follow_your_emoji.pipeline import CLIP_MEAN, CLIP_STD

        x = torch.nn.functional.interpolate(images, size=(224, 224), mode="bicubic", align_corners=False)
        mean, std = (torch.from_numpy(v).to(images.device, images.dtype).view(1, 3, 1, 1)
                     for v in (CLIP_MEAN, CLIP_STD))
        return (x - mean) / std

    def codec_on(self, device: torch.device) -> PixelCodec | VaeCodec:
        """The latent codec of the config (SD's VAE read from the option `vae` once per process)."""
        if self._codec is None:
            latent = self.config["latent"]
            if latent["type"] != "vae":
                self._codec = PixelCodec(int(latent["factor"]))
            else:
                from diffusers import AutoencoderKL

                from facefab.models.weights import load_model

                self._codec = VaeCodec(load_model(AutoencoderKL, self.options["vae"], device=device, dtype="fp32"))
        return self._codec.to(device)

    def _load_init(self, net: torch.nn.Module, config: dict[str, Any]) -> None:
        from facefab.models.weights import resolve_checkpoint

        theirs, parts = self.read_init(resolve_checkpoint(self.options["init"]))
        differ = [key for key in self.init_keys if theirs.get(key) != config.get(key)]
        if differ:
            raise ValueError(f"init {self.options['init']}: its {differ} differ from this run's config "
                             "(train with the same --preset / --model)")
        for name, part in parts.items():
            getattr(net, name).load_state_dict(part.state_dict())


def pick_reference(rng: np.random.Generator, valid: np.ndarray, start: int, end: int, margin: int) -> int:
    """A meshed frame at least `margin` frames outside [start, end), else any outside it, else any meshed."""
    known = np.flatnonzero(valid)
    for pool in (known[(known < start - margin) | (known >= end + margin)], known[(known < start) | (known >= end)],
                 known):
        if len(pool):
            return int(rng.choice(pool))
    raise ValueError("no meshed frame")


def encode_frames(codec: PixelCodec | VaeCodec, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, F, S, S, 3) uint8 -> (B, C, F, h, w) latents (no gradient)."""
    b, f = images.shape[:2]
    with torch.no_grad():
        latents = codec.encode(to_unit(images.flatten(0, 1), device))
    return latents.reshape(b, f, *latents.shape[1:]).transpose(1, 2)


def noised(scheduler, latents: torch.Tensor, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, what the model learns to predict): a random timestep per sample, the
    noise with a per-channel `offset` (noise offset) added."""
    b = latents.shape[0]
    noise = torch.randn_like(latents)
    if offset:
        noise = noise + offset * torch.randn(b, latents.shape[1], *([1] * (latents.ndim - 2)), device=latents.device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=latents.device)
    return scheduler.add_noise(latents, noise, timesteps), timesteps, training_target(scheduler, latents, noise,
                                                                                     timesteps)


__all__ = ["COMMON_OPTIONS", "Group", "ReferenceDiffusionSystem", "encode_frames", "noised", "pick_reference"]

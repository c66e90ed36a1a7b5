"""HalloNet: Hallo's five trained parts, wired as the official `Net` (scripts/train_stage2.py), with the
official attribute names (`reference_unet`, `denoising_unet`, `face_locator`, `imageproj`, `audioproj`),
so a released net.pth maps onto it part by part.

How the conditions reach the denoiser (an AudioUNetMotionModel, shared.motion_unet):

- appearance: the reference net runs once on the reference latents (timestep 0, the face tokens as its
  context); every denoiser frame's spatial self-attention also attends to the reference tokens
  (shared.reference_attention);
- motion frames: the reference net runs on the last generated frames of the previous window too (one
  batch of 1 + k frames per sample, as the official). Their tokens do not join the spatial attention:
  at every cross-attention layer they are prepended, as k extra frames, to the input of the temporal
  module that follows (the official Transformer3DModel returns them and the block concatenates them
  before its motion module), and cut off its output: the new window continues the previous one;
- identity: the face embedding (ArcFace, or zeros) -> ImageProjModel -> the cross-attention tokens of
  both UNets;
- face region: the face box image -> FaceLocator -> added to the output of the denoiser's conv_in;
- speech: per-frame speech features -> AudioProjModel -> per-frame tokens for the audio modules,
  weighted by the pose / face / lip region masks (hierarchical audio-driven visual synthesis).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from functools import partial

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from ..shared.audio_projection import AudioProjModel
from ..shared.motion_unet import AudioUNetMotionModel, audio_conditioning, build_denoiser
from ..shared.reference_attention import ReferenceBank, install_reference_attention, spatial_self_attention_names
from .config import REGIONS, check
from .face_locator import FaceLocator
from .image_proj import ImageProjModel

PART_CLASSES: dict[str, type] = {"reference_unet": UNet2DConditionModel, "denoising_unet": AudioUNetMotionModel,
                                 "face_locator": FaceLocator, "imageproj": ImageProjModel,
                                 "audioproj": AudioProjModel}


def _fresh_denoiser(config: dict) -> AudioUNetMotionModel:
    denoiser = build_denoiser(config["unet"], config["motion_preset"],
                              audio_attention_dim=config["audio_proj"]["output_dim"], audio_regions=len(REGIONS),
                              audio_block=config.get("audio_block", "simple"))
    for name, module in denoiser.named_modules():
        if re.search(r"\.motion_modules\.\d+\.proj_out$", name):  # AnimateDiff's zero-initialised output
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    return denoiser


_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "reference_unet": lambda config: UNet2DConditionModel(**config["unet"]),
    "denoising_unet": _fresh_denoiser,
    "face_locator": lambda config: FaceLocator(**config["face_locator"]),
    "imageproj": lambda config: ImageProjModel(**config["image_proj"]),
    "audioproj": lambda config: AudioProjModel(**config["audio_proj"]),
}


def build_parts(config: dict, only: tuple[str, ...] = tuple(PART_CLASSES)) -> dict[str, nn.Module]:
    """Fresh parts of `config` (those named in `only`). The outputs of the motion modules, the audio
    modules and the face locator start at zero, so a fresh denoiser is a plain image UNet."""
    check(config)
    return {name: _BUILDERS[name](config) for name in only}


class MotionFrames:
    """The motion-frame features of the temporal modules (see the module docstring): (B, k, C, h, w)
    per spatial attention (`features`, keyed by its processor name), prepended to the input of the
    motion module after that attention while set."""

    _ATTENTION = re.compile(r"^(.+)\.attentions\.(\d+)\.transformer_blocks\.0\.attn1\.processor$")

    def __init__(self, denoiser: nn.Module) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self.names: list[str] = []
        self._calls: dict[str, list[tuple[int, int]]] = {}  # (motion frames, frames) of running calls
        for name in spatial_self_attention_names(denoiser):
            match = self._ATTENTION.match(name)
            if match is None:
                continue
            self.names.append(name)
            module = denoiser.get_submodule(f"{match[1]}.motion_modules.{match[2]}")
            module.register_forward_pre_hook(partial(self._prepend, name), with_kwargs=True)
            module.register_forward_hook(partial(self._cut, name))

    def take(self, bank: ReferenceBank, motion_frames: int) -> None:
        """Split the bank's (B, (1 + k) * N, C) tokens: the first frame's stay in the bank (spatial
        attention), the k motion frames' become the features (temporal attention)."""
        self.features.clear()
        for name, tokens in list(bank.tokens.items()):
            b, total, c = tokens.shape
            n = total // (1 + motion_frames)
            bank.tokens[name] = tokens[:, :n]
            if motion_frames and name in self.names:
                side = math.isqrt(n)  # square latents, as the official reshape assumes
                self.features[name] = tokens[:, n:].reshape(b, motion_frames, side, side, c).permute(0, 1, 4, 2, 3)

    def clear(self) -> None:
        self.features.clear()

    def _prepend(self, name: str, _module, args: tuple, kwargs: dict):
        features = self.features.get(name)
        if features is None:
            self._calls.setdefault(name, []).append((0, 0))
            return None
        hidden, frames = args[0], _num_frames(args, kwargs)
        b = hidden.shape[0] // frames
        if b % features.shape[0]:
            raise ValueError(f"denoiser batch {b} is not a multiple of the motion-frame batch {features.shape[0]}")
        motion = features.repeat_interleave(b // features.shape[0], dim=0).to(hidden.dtype)
        joined = torch.cat([motion, hidden.reshape(b, frames, *hidden.shape[1:])], dim=1).flatten(0, 1)
        self._calls.setdefault(name, []).append((motion.shape[1], frames))
        return _with_num_frames((joined, *args[1:]), kwargs, frames + motion.shape[1])

    def _cut(self, name: str, _module, _args, output: torch.Tensor) -> torch.Tensor | None:
        k, frames = self._calls[name].pop()
        if not k:
            return None
        return output.reshape(-1, k + frames, *output.shape[1:])[:, k:].flatten(0, 1)


def _num_frames(args: tuple, kwargs: dict) -> int:
    return int(kwargs["num_frames"]) if "num_frames" in kwargs else int(args[4])


def _with_num_frames(args: tuple, kwargs: dict, frames: int) -> tuple[tuple, dict]:
    if "num_frames" in kwargs or len(args) <= 4:
        return args, {**kwargs, "num_frames": frames}
    return (*args[:4], frames, *args[5:]), kwargs


@contextmanager
def face_features_added(denoiser: nn.Module, features: torch.Tensor, frames: int):
    """Within: `features` (B, C0, h, w) are added to the output of the denoiser's conv_in for each of the
    `frames` frames of every sample (the denoiser folds frames into its batch b-major)."""
    flat = features.repeat_interleave(frames, dim=0)
    handle = denoiser.conv_in.register_forward_hook(lambda _module, _args, out: out + flat.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


class HalloNet(nn.Module):
    """The five parts, wired (see the module docstring)."""

    def __init__(self, reference_unet: UNet2DConditionModel, denoising_unet: AudioUNetMotionModel,
                 face_locator: FaceLocator, imageproj: ImageProjModel, audioproj: AudioProjModel):
        super().__init__()
        self.reference_unet, self.denoising_unet = reference_unet, denoising_unet
        self.face_locator, self.imageproj, self.audioproj = face_locator, imageproj, audioproj
        self.bank = install_reference_attention(reference_unet, denoising_unet)
        self.motion_frames = MotionFrames(denoising_unet)

    @classmethod
    def fresh(cls, config: dict) -> HalloNet:
        return cls(**build_parts(config))

    def parts(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in PART_CLASSES}

    def face_tokens(self, face_embedding: torch.Tensor) -> torch.Tensor:
        """(B, E) identity embeddings -> (B, T, D) cross-attention tokens."""
        return self.imageproj(face_embedding.to(self.imageproj.dtype))

    def speech_tokens(self, speech: torch.Tensor) -> torch.Tensor:
        """(B, F, seq_len, blocks, channels) speech features -> (B*F, L, D) audio tokens."""
        return self.audioproj(speech.to(self.audioproj.dtype)).flatten(0, 1)

    def region_features(self, face_region: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) face box images in [0, 1] -> (B, C0, h, w) features for the denoiser's conv_in."""
        channels = self.face_locator.config.conditioning_channels
        return self.face_locator(face_region.to(self.face_locator.dtype).expand(-1, channels, -1, -1))

    def write_reference(self, reference: torch.Tensor, motion: torch.Tensor | None, face_tokens: torch.Tensor,
                        keep: torch.Tensor | None = None) -> None:
        """Run the reference net on (B, C, h, w) reference latents and (B, C, k, h, w) motion-frame latents
        (or None): the reference tokens go to the bank (zeroed for samples whose `keep` is 0: the
        unconditional branch), the motion frames' to the temporal modules."""
        frames = reference[:, :, None] if motion is None or motion.shape[2] == 0 else \
            torch.cat([reference[:, :, None], motion.to(reference.dtype)], dim=2)
        b, c, k, h, w = frames.shape
        dtype = self.reference_unet.dtype
        timestep = torch.zeros(b * k, device=frames.device, dtype=torch.long)
        with self.bank.writing(frames_per_sample=k):
            self.reference_unet(frames.transpose(1, 2).reshape(b * k, c, h, w).to(dtype), timestep,
                                encoder_hidden_states=face_tokens.repeat_interleave(k, dim=0).to(dtype))
        self.motion_frames.take(self.bank, k - 1)
        if keep is not None:
            for name, tokens in self.bank.tokens.items():
                self.bank.tokens[name] = tokens * keep.to(tokens).view(-1, 1, 1)

    def clear(self) -> None:
        self.bank.clear()
        self.motion_frames.clear()

    def denoise(self, latents: torch.Tensor, timestep: torch.Tensor, face_tokens: torch.Tensor,
                face_features: torch.Tensor, audio_tokens: torch.Tensor | None = None,
                region_masks: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, F, h, w) noisy latents -> the model output, reading the reference written last;
        face_tokens (B, T, D), face_features (B, C0, h, w), audio_tokens (B*F, L, D), region_masks
        (B, 3, M, M) or None (no audio attention: stage 1)."""
        frames, dtype = latents.shape[2], self.denoising_unet.dtype
        with ExitStack() as stack:
            stack.enter_context(face_features_added(self.denoising_unet, face_features, frames))
            if audio_tokens is not None:
                masks = None if region_masks is None else region_masks.repeat_interleave(frames, dim=0)
                stack.enter_context(audio_conditioning(self.denoising_unet, audio_tokens.to(dtype), masks))
            context = face_tokens.repeat_interleave(frames, dim=0).to(dtype)
            return self.denoising_unet(latents.to(dtype), timestep, encoder_hidden_states=context).sample

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, reference: torch.Tensor,
                motion: torch.Tensor | None, face_region: torch.Tensor, face_embedding: torch.Tensor,
                speech: torch.Tensor | None = None, region_masks: torch.Tensor | None = None,
                keep_image: torch.Tensor | None = None, keep_audio: torch.Tensor | None = None) -> torch.Tensor:
        """The training forward: noisy (B, C, F, h, w) latents, reference (B, C, h, w) and motion
        (B, C, k, h, w) latents, face_region (B, 1, H, W), face_embedding (B, E), speech (B, F, seq_len,
        blocks, channels) and region_masks (B, 3, M, M) (None in stage 1). `keep_image` (B,) 0 drops a
        sample's reference, face embedding and face region, `keep_audio` its speech (classifier-free
        guidance training)."""
        def kept(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
            return x if keep is None else x * keep.to(x).view(-1, *([1] * (x.dim() - 1)))

        face_tokens = self.face_tokens(kept(face_embedding, keep_image))
        features = kept(self.region_features(face_region), keep_image)
        audio = None
        if speech is not None:
            audio = kept(self.audioproj(speech.to(self.audioproj.dtype)), keep_audio).flatten(0, 1)
        self.write_reference(reference, motion, face_tokens, keep_image)
        try:
            return self.denoise(noisy, timesteps, face_tokens, features, audio, region_masks)
        finally:
            self.clear()


__all__ = ["PART_CLASSES", "HalloNet", "MotionFrames", "build_parts", "face_features_added"]

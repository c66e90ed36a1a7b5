"""Follow-Your-Emoji inference (and the network its training stages share): a portrait animated by the
expression-aware landmarks of a driving video (the `DrivenPipeline` interface of models/shared/driven.py).

Pipeline folder (what `facefab train follow-your-emoji` exports and `facefab convert follow-your-emoji` writes):

    model_index.json   {"_class_name": "FollowYourEmojiPipeline", "<part>": ["<library>", "<class>"], ...}
    pipeline.json      the config (models/follow_your_emoji/config.py): size, latents, landmarks, scheduler, sampling
    reference_net/     UNet2DConditionModel: the reference image's appearance (the official referencenet.pth)
    denoising_unet/    AudioUNetMotionModel without audio: SD spatial layers + AnimateDiff motion modules
                       (the official unet.pth, a UNet3DConditionModel with attention_mode SpatialAtten)
    lmk_guider/        LandmarkGuider: landmark image -> features added after the denoiser's conv_in (lmk_guider.pth)
    vae/               AutoencoderKL, when latent.type is "vae" (the tiny config uses pixel latents)
    image_encoder/     optional transformers CLIPVisionModelWithProjection (sd-image-variations' image_encoder):
                       the reference's CLIP tokens are the cross-attention context; without it the context
                       is one zero token (as facefab trains it)

Generation: the driving meshes (NaN rows filled over time) are retargeted onto the reference
(landmarks.retarget: relative motion, or the driving face placed on the reference's), drawn as
expression-aware landmark images and turned into guider features; the reference runs once through the
reference net, whose spatial self-attention inputs every denoiser frame's self-attention also attends to
(the official SpatialAtten: shared.reference_attention "joined"). Classifier-free guidance as the official:
the unconditional branch has no reference tokens (plain self-attention) and a zero context, the same
landmark features. Long videos, the paper's progressive strategy (`sampling.long_video` "progressive"):
keyframes spread over the clip are generated first as one window, then the frames between consecutive
keyframes in windows whose first and last frames are those keyframes, held at their noised latents every
step (shared.sampling.sample_inpainted; recursively when a gap is longer than a window); "overlapping":
windows averaged every step (shared.sampling.sample_overlapping, the official context scheduler).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from ..shared import pipeline_folder as folder_io
from ..shared.guider import guider_conditioning
from ..shared.latents import PixelCodec, VaeCodec, codec_from_folder, to_uint8, to_unit
from ..shared.motion_unet import AudioUNetMotionModel, build_denoiser
from ..shared.net_pipeline import NetPipeline
from ..shared.reference_attention import install_reference_attention
from ..shared.sampling import guided, initial_noise, make_scheduler, sample_inpainted, sample_overlapping
from ..weights import pick_device, pick_dtype, resolve_checkpoint
from .config import check
from .guider import LandmarkGuider
from .landmarks import landmark_images, retarget

CLASS_NAME = "FollowYourEmojiPipeline"
PART_CLASSES: dict[str, type] = {"reference_net": UNet2DConditionModel, "denoising_unet": AudioUNetMotionModel,
                                 "lmk_guider": LandmarkGuider}
VAE_FOLDER, IMAGE_ENCODER_FOLDER = "vae", "image_encoder"
GUIDER_CHUNK = 16
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


# -- the network --------------------------------------------------------------------------------------

def _fresh_denoiser(config: dict) -> AudioUNetMotionModel:
    """The denoiser of `config`; its motion modules' output (proj_out) starts at zero, so a fresh one is
    the image UNet frame by frame until the temporal stage trains them (AnimateDiff's init)."""
    denoiser = build_denoiser(config["unet"], config["motion_preset"], reference_attention="joined")
    for name, module in denoiser.named_modules():
        if ".motion_modules." in name and name.endswith("proj_out"):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    return denoiser


_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "reference_net": lambda config: UNet2DConditionModel(**config["unet"]),
    "denoising_unet": _fresh_denoiser,
    "lmk_guider": lambda config: LandmarkGuider(**config["lmk_guider"]),
}


def build_parts(config: dict, only: tuple[str, ...] = tuple(PART_CLASSES)) -> dict[str, nn.Module]:
    check(config)
    return {name: _BUILDERS[name](config) for name in only}


class FollowYourEmojiNet(nn.Module):
    """The three trained parts, wired: the reference net writes the ReferenceBank the denoiser reads."""

    def __init__(self, reference_net: UNet2DConditionModel, denoising_unet: AudioUNetMotionModel,
                 lmk_guider: LandmarkGuider):
        super().__init__()
        self.reference_net, self.denoising_unet, self.lmk_guider = reference_net, denoising_unet, lmk_guider
        self.bank = install_reference_attention(reference_net, denoising_unet, mode="joined")

    @classmethod
    def fresh(cls, config: dict) -> FollowYourEmojiNet:
        return cls(**build_parts(config))

    def parts(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in PART_CLASSES}

    def empty_context(self, batch: int, device=None) -> torch.Tensor:
        """(batch, 1, D) zeros: the context without an image encoder (and the unconditional one)."""
        return torch.zeros(batch, 1, self.reference_net.config.cross_attention_dim, device=device,
                           dtype=self.reference_net.dtype)

    def write_reference(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> None:
        """Run the reference net on (B, C, h, w) latents at timestep 0 with the (B, L, D) context (the
        official passes the CLIP tokens to it too)."""
        dtype = self.reference_net.dtype
        if context is None:
            context = self.empty_context(latents.shape[0], latents.device)
        timestep = torch.zeros(latents.shape[0], device=latents.device, dtype=torch.long)
        with self.bank.writing(frames_per_sample=1):
            self.reference_net(latents.to(dtype), timestep, encoder_hidden_states=context.to(dtype))

    def denoise(self, latents: torch.Tensor, timestep: torch.Tensor, features: torch.Tensor, context: torch.Tensor,
                use_reference: bool = True) -> torch.Tensor:
        """(B, C, F, h, w) noisy latents -> the model output, with (B, C0, F, h, w) guider features and
        (B*F, L, D) context; reads the reference tokens written last unless `use_reference` is False
        (the official unconditional branch: plain self-attention)."""
        dtype = self.denoising_unet.dtype
        saved = self.bank.tokens
        if not use_reference:
            self.bank.tokens = {}
        try:
            with guider_conditioning(self.denoising_unet, features):
                return self.denoising_unet(latents.to(dtype), timestep,
                                           encoder_hidden_states=context.to(dtype)).sample
        finally:
            self.bank.tokens = saved

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, reference_latents: torch.Tensor,
                landmarks: torch.Tensor, use_reference: bool = True) -> torch.Tensor:
        """The training forward: noisy (B, C, F, h, w), reference_latents (B, C, h, w), landmark images
        (B, 3, F, H, W) in [0, 1]; `use_reference` False drops the reference for the whole batch
        (classifier-free guidance training). The context is the zero token."""
        b, f = noisy.shape[0], noisy.shape[2]
        features = self.lmk_guider(landmarks.to(self.lmk_guider.dtype))
        context = self.empty_context(b, noisy.device)
        self.write_reference(reference_latents, context)
        try:
            return self.denoise(noisy, timesteps, features, context.repeat_interleave(f, dim=0), use_reference)
        finally:
            self.bank.clear()


# -- long videos ----------------------------------------------------------------------------------------

def progressive_plan(n: int, window: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The paper's progressive generation of `n` frames with a `window`-frame model, as (frames, known)
    index arrays in order: one window of keyframes spread evenly from the first to the last frame (none
    known; as few as leave every gap within a window), then for every two consecutive keyframes the frames from one to the other, both ends known;
    a gap longer than a window is split the same way (its own keyframes first, its ends known)."""
    if window < 3:
        raise ValueError(f"window must be >= 3, got {window}")

    def plan(frames: np.ndarray, ends_known: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        known = frames[[0, -1]] if ends_known else frames[:0]
        if len(frames) <= window:
            return [(frames, known)]
        # the fewest keyframes whose gaps fit a window each (at most a window of them)
        count = min(window, -(-(len(frames) - 1) // (window - 1)) + 1)
        positions = np.unique(np.round(np.linspace(0, len(frames) - 1, count)).astype(int))
        out = [(frames[positions], known)]
        for a, b in itertools.pairwise(positions):
            if b - a > 1:
                out += plan(frames[a:b + 1], True)
        return out

    return plan(np.arange(n), False) if n > 0 else []


def clip_pixels(image: np.ndarray, size: int = 224) -> np.ndarray:
    """(S, S, 3) uint8 RGB -> (3, size, size) float32: CLIPImageProcessor's resize + normalisation."""
    x = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    return ((x - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


# -- the folder ---------------------------------------------------------------------------------------------

def save_parts(parts: dict[str, nn.Module], folder: str, config: dict) -> None:
    """Write `parts` as save_pretrained subfolders (safetensors), pipeline.json and model_index.json."""
    folder_io.save_parts(parts, folder, check(config), CLASS_NAME)


def read_config(folder: str) -> dict:
    return folder_io.read_config(folder, check, "Follow-Your-Emoji")


def load_parts(folder: str, device: Any = "cpu", dtype: Any = "fp32") -> dict[str, nn.Module]:
    return folder_io.load_parts(folder, PART_CLASSES, "Follow-Your-Emoji", "follow-your-emoji", device, dtype)


# -- the pipeline -------------------------------------------------------------------------------------------

class FollowYourEmojiPipeline(NetPipeline):
    """A reference crop driven by a driving video's landmarks (see the module docstring)."""

    def __init__(self, net: FollowYourEmojiNet, codec: PixelCodec | VaeCodec, config: dict, image_encoder=None):
        self.net, self.codec, self.config = net.eval(), codec, check(config)
        self.image_encoder = image_encoder

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "auto", dtype: str = "auto") -> FollowYourEmojiPipeline:
        local = resolve_checkpoint(folder)
        config = read_config(local)
        device = pick_device(device) if not isinstance(device, torch.device) else device
        dtype = pick_dtype(dtype, device) if not isinstance(dtype, torch.dtype) else dtype
        net = FollowYourEmojiNet(**load_parts(local, device, dtype))
        codec = codec_from_folder(local, config["latent"], device, dtype)
        encoder = None
        path = os.path.join(local, IMAGE_ENCODER_FOLDER)
        if os.path.isdir(path):
            from transformers import CLIPVisionModelWithProjection

            encoder = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True)
            encoder = encoder.to(device=device, dtype=dtype).eval()
        return cls(net, codec, config, encoder)

    def save_pretrained(self, folder: str) -> None:
        save_parts(self.net.parts(), folder, self.config)
        if isinstance(self.codec, VaeCodec):
            self.codec.vae.save_pretrained(os.path.join(folder, VAE_FOLDER), safe_serialization=True)
        if self.image_encoder is not None:
            self.image_encoder.save_pretrained(os.path.join(folder, IMAGE_ENCODER_FOLDER), safe_serialization=True)

    def context(self, reference: np.ndarray) -> torch.Tensor:
        """(1, L, D): the reference's CLIP tokens (last_hidden_state as the official, or the projected
        image embedding when the hidden width is not the UNet's context width), else one zero token."""
        if self.image_encoder is None:
            return self.net.empty_context(1, self.device)
        pixels = torch.from_numpy(clip_pixels(reference))[None].to(self.device, self.image_encoder.dtype)
        out = self.image_encoder(pixels)
        width = self.net.reference_net.config.cross_attention_dim
        tokens = out.last_hidden_state if out.last_hidden_state.shape[-1] == width else out.image_embeds[:, None]
        return tokens.to(self.dtype)

    def landmark_features(self, target: np.ndarray) -> torch.Tensor:
        """(N, 478, 2) landmarks -> (1, C0, N, h, w) guider features of their landmark images."""
        size, drawing = self.size, self.config["landmarks"]
        parts = []
        for i in range(0, len(target), GUIDER_CHUNK):
            images = landmark_images(target[i:i + GUIDER_CHUNK], size, bool(drawing.get("iris_point", True)),
                                     bool(drawing.get("forehead_edge", False)))
            parts.append(self.net.lmk_guider(torch.from_numpy(images).to(self.device, self.dtype)))
        return torch.cat(parts).transpose(0, 1)[None]

    @torch.no_grad()
    def __call__(self, reference: np.ndarray, points: np.ndarray, driving: np.ndarray, driving_points: np.ndarray, *,
                 relative: bool = True, steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8 frames of `reference` (S, S, 3) moved like the driving meshes (see DrivenPipeline)."""
        size, sampling = self.size, self.config["sampling"]
        if reference.shape != (size, size, 3):
            raise ValueError(f"reference must be ({size}, {size}, 3) uint8, got {reference.shape}")
        driving_points = np.asarray(driving_points, np.float32)
        if driving_points.ndim != 3 or len(driving_points) < 1:
            raise ValueError(f"driving_points must be (N, 478, 2), got {driving_points.shape}")
        if driving is not None and len(driving) != len(driving_points):
            raise ValueError(f"{len(driving)} driving frames but {len(driving_points)} meshes")
        n = len(driving_points)
        steps = int(steps or sampling["steps"])
        scale = float(sampling["guidance_scale"] if guidance_scale is None else guidance_scale)
        device, dtype = self.device, self.dtype
        guide = scale > 1.0

        target = retarget(points, driving_points, relative)
        features = self.landmark_features(target)
        context = self.context(reference)
        uncond_context = torch.zeros_like(context)
        reference_latents = self.codec.encode(to_unit(reference[None], device, dtype))
        self.net.write_reference(reference_latents, context)

        def predict(latents: torch.Tensor, t: torch.Tensor, frames) -> torch.Tensor:
            feats, f = features[:, :, frames], latents.shape[2]
            out = self.net.denoise(latents, t, feats, context.repeat_interleave(f, dim=0)).float()
            if not guide:
                return out
            uncond = self.net.denoise(latents, t, feats, uncond_context.repeat_interleave(f, dim=0),
                                      use_reference=False).float()
            return guided(out, uncond, scale)

        scheduler = make_scheduler(self.config["scheduler"])
        h, channels = size // self.codec.factor, self.codec.channels
        window = int(sampling["context_frames"])
        try:
            if sampling.get("long_video", "progressive") == "overlapping" or n <= window:
                latents = initial_noise((1, channels, n, h, h), seed, device, torch.float32, scheduler)
                latents = sample_overlapping(predict, scheduler, latents, steps, window,
                                             int(sampling["context_overlap"]), progress)
            else:
                latents = self._progressive(predict, scheduler, (1, channels, n, h, h), steps, window, seed, progress,
                                             device)
        finally:
            self.net.bank.clear()
        return to_uint8(self.codec.decode(latents[0].transpose(0, 1).to(dtype)))

    @staticmethod
    def _progressive(predict, scheduler, shape, steps: int, window: int, seed: int, progress,
                     device: torch.device) -> torch.Tensor:
        """The windows of `progressive_plan`, each denoised with its known frames held."""
        plan = progressive_plan(shape[2], window)
        result = torch.zeros(shape, dtype=torch.float32, device=device)
        for i, (frames, known) in enumerate(plan):
            idx = torch.from_numpy(frames).to(device)
            x = initial_noise((*shape[:2], len(frames), *shape[3:]), seed + i, result.device, torch.float32, scheduler)
            mask = torch.from_numpy(np.isin(frames, known)).to(device)
            out = sample_inpainted(lambda lat, t, idx=idx: predict(lat, t, idx), scheduler, x, steps,
                                   result[:, :, idx], mask, seed=seed + 1000 + i)
            result[:, :, idx] = out
            if progress:
                progress(i + 1, len(plan))
        return result


__all__ = ["CLASS_NAME", "FollowYourEmojiNet", "FollowYourEmojiPipeline", "build_parts", "clip_pixels", "load_parts",
           "progressive_plan", "read_config", "save_parts"]

"""MegActor inference (and the network its training stages share): a portrait animated by a raw driving
video (the `DrivenPipeline` interface of models/shared/driven.py), after the official
animate/unet_magic_noiseAttenST_Ada (MagicAnimate's ReferenceNet + AnimateDiff denoiser, with the driving
encoder and the background image in place of the text).

Pipeline folder (what `facefab train megactor` exports and `facefab convert megactor` writes):

    model_index.json       {"_class_name": "MegActorPipeline", "<part>": ["<library>", "<class>"], ...}
    pipeline.json          the config (models/megactor/config.py)
    appearance_encoder/    UNet2DConditionModel: the reference's appearance (the official AppearanceEncoderModel)
    unet/                  AudioUNetMotionModel without audio: SD spatial layers + AnimateDiff motion modules; its
                           conv_in takes [noisy latents, reference latents, background mask, driving features]
                           (the official UNet3DConditionModel, spatial keys as they are)
    condition_input_layer/ ConditionInputLayer: driving frames -> features, AdaLN-modulated by the reference
                           (the official unet.condition_input_layer)
    background_encoder/    BackgroundEncoder (image_encoder.type "conv"): background -> context tokens
    image_encoder/         CLIPVisionModelWithProjection (image_encoder.type "clip"): the official context,
                           every projected token of the reference's background
    vae/                   AutoencoderKL, when latent.type is "vae" (the tiny config uses pixel latents)

Generation: the driving crops go through the official face-region preprocessing (models/megactor/driving.py:
the face box kept and greyed, or with `relative` the contour-preserving eye / mouth / brow patches placed on
the reference's face) and the driving encoder, AdaLN-modulated by the reference image; the reference's
latents and its background mask are concatenated to every frame's noisy latents; the context tokens are
the reference's background through the image encoder. Every step the appearance encoder runs on the
reference's latents at that timestep with that context and its spatial self-attention inputs join the
denoiser's self-attention in the mid and up blocks (the official ReferenceAttentionControl, fusion_blocks
"midup"). Classifier-free guidance as the official: the unconditional branch reads no reference tokens,
everything else the same. Long videos: context windows of 16 frames overlapping by 8, the predictions of
overlapping windows averaged every step (the official uniform context scheduler;
shared.sampling.sample_overlapping).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from ..follow_your_emoji.pipeline import clip_pixels
from ..shared import pipeline_folder as folder_io
from ..shared.latents import PixelCodec, VaeCodec, codec_from_folder, to_unit
from ..shared.motion_unet import AudioUNetMotionModel, build_denoiser
from ..shared.net_pipeline import IMAGE_ENCODER_FOLDER, VAE_FOLDER, NetPipeline
from ..shared.reference_attention import install_reference_attention, spatial_self_attention_names
from ..shared.sampling import guided, initial_noise, make_scheduler, sample_overlapping
from ..weights import resolve_checkpoint
from .config import check, denoiser_in, latent_channels
from .driving import background_mask, driving_frames
from .encoders import BackgroundEncoder, ConditionInputLayer

log = logging.getLogger(__name__)

CLASS_NAME = "MegActorPipeline"
PART_CLASSES: dict[str, type] = {"appearance_encoder": UNet2DConditionModel, "unet": AudioUNetMotionModel,
                                 "condition_input_layer": ConditionInputLayer, "background_encoder": BackgroundEncoder}
ENCODER_CHUNK = 16


def part_names(config: dict) -> tuple[str, ...]:
    """The trained parts of `config`: the background encoder only where it stands in for CLIP."""
    names = ("appearance_encoder", "unet", "condition_input_layer")
    return (*names, "background_encoder") if config["image_encoder"]["type"] == "conv" else names


def _denoiser(config: dict) -> AudioUNetMotionModel:
    """The denoiser; its motion modules start at zero output (AnimateDiff's init): a fresh one is the image
    UNet frame by frame until the temporal stage trains them."""
    unet = dict(config["unet"], in_channels=denoiser_in(config), out_channels=latent_channels(config))
    denoiser = build_denoiser(unet, config["motion_preset"], reference_attention="joined",
                              use_motion_mid_block=bool(config.get("motion_mid_block", False)))
    for proj in (m for n, m in denoiser.named_modules() if ".motion_modules." in n and n.endswith("proj_out")):
        nn.init.zeros_(proj.weight)
        nn.init.zeros_(proj.bias)
    return denoiser


def build_parts(config: dict, only: tuple[str, ...] | None = None) -> dict[str, nn.Module]:
    check(config)
    size, image = int(config["size"]), config["image_encoder"]
    builders: dict[str, Callable[[], nn.Module]] = {
        "appearance_encoder": lambda: UNet2DConditionModel(**config["unet"]),
        "unet": lambda: _denoiser(config),
        "condition_input_layer": lambda: ConditionInputLayer(**config["condition_input_layer"], sample_size=size),
        "background_encoder": lambda: BackgroundEncoder(int(image.get("tokens", 16)),
                                                        int(config["unet"]["cross_attention_dim"]),
                                                        tuple(image.get("channels", (32, 64, 128)))),
    }
    return {name: builders[name]() for name in (only or part_names(config))}


class MegActorNet(nn.Module):
    """The trained parts, wired: the appearance encoder writes the ReferenceBank the denoiser reads (mid and
    up blocks for fusion_blocks "midup")."""

    def __init__(self, appearance_encoder: UNet2DConditionModel, unet: AudioUNetMotionModel,
                 condition_input_layer: ConditionInputLayer, background_encoder: BackgroundEncoder | None = None,
                 fusion_blocks: str = "midup"):
        super().__init__()
        self.appearance_encoder, self.unet = appearance_encoder, unet
        self.condition_input_layer, self.background_encoder = condition_input_layer, background_encoder
        self.bank = install_reference_attention(appearance_encoder, unet, mode="joined")
        if fusion_blocks == "midup":  # the down blocks keep plain self-attention (and store nothing)
            for model in (appearance_encoder, unet):
                processors = dict(model.attn_processors)
                for name in spatial_self_attention_names(model):
                    if name.startswith("down_blocks."):
                        processors[name] = AttnProcessor2_0()
                model.set_attn_processor(processors)

    @classmethod
    def fresh(cls, config: dict) -> MegActorNet:
        return cls(**build_parts(config), fusion_blocks=config.get("fusion_blocks", "midup"))

    def parts(self) -> dict[str, nn.Module]:
        names = [*PART_CLASSES][:3] + (["background_encoder"] if self.background_encoder is not None else [])
        return {name: getattr(self, name) for name in names}

    @property
    def width(self) -> int:
        return int(self.appearance_encoder.config.cross_attention_dim)

    def tokens(self, background: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) background in [-1, 1] -> (B, T, D) context (the trained background encoder), or one
        zero token per sample without one."""
        if self.background_encoder is None:
            return torch.zeros(len(background), 1, self.width, device=background.device, dtype=self.unet.dtype)
        return self.background_encoder(background.to(self.background_encoder.dtype))

    def driving_features(self, driving: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) driving frames and (B, 3, H, W) reference, both in [0, 1] -> (B, C, F, h, w)."""
        layer = self.condition_input_layer
        chunks = [layer(driving[:, :, i:i + ENCODER_CHUNK].to(layer.dtype), reference.to(layer.dtype))
                  for i in range(0, driving.shape[2], ENCODER_CHUNK)]
        return torch.cat(chunks, dim=2)

    def write_reference(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> None:
        """Run the appearance encoder on (B, C, h, w) reference latents at `timestep` (the official runs it at
        the denoising step's) with the (B, L, D) context."""
        dtype = self.appearance_encoder.dtype
        timestep = torch.as_tensor(timestep, device=latents.device).reshape(-1).expand(latents.shape[0])
        with self.bank.writing(frames_per_sample=1):
            self.appearance_encoder(latents.to(dtype), timestep, encoder_hidden_states=context.to(dtype))

    def denoise(self, noisy: torch.Tensor, timestep: torch.Tensor, concat: torch.Tensor, features: torch.Tensor,
                context: torch.Tensor, use_reference: bool = True) -> torch.Tensor:
        """(B, C, F, h, w) noisy latents with (B, C+1, 1 or F, h, w) reference latents + background mask and
        (B, Cg, F, h, w) driving features concatenated (the official conv_in order) -> the model output;
        context (B*F, L, D); `use_reference` False: plain self-attention (the unconditional branch)."""
        f = noisy.shape[2]
        x = torch.cat([noisy, concat.expand(-1, -1, f, -1, -1), features], dim=1).to(self.unet.dtype)
        saved = self.bank.tokens
        if not use_reference:
            self.bank.tokens = {}
        try:
            return self.unet(x, timestep, encoder_hidden_states=context.to(self.unet.dtype)).sample
        finally:
            self.bank.tokens = saved

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, reference_latents: torch.Tensor,
                reference: torch.Tensor, mask: torch.Tensor, driving: torch.Tensor,
                context: torch.Tensor | None = None, use_reference: bool = True) -> torch.Tensor:
        """The training forward: noisy (B, C, F, h, w); reference_latents (B, C, h, w); reference (B, 3, H, W)
        in [0, 1]; mask (B, 1, H, W) the background mask; driving (B, 3, F, H, W) in [0, 1] (preprocessed);
        context (B, L, D) or None (the background encoder on the masked reference)."""
        f, grid = noisy.shape[2], noisy.shape[-2:]
        if context is None:
            context = self.tokens((reference * 2 - 1) * mask)
        features = self.driving_features(driving, reference)
        small = nn.functional.interpolate(mask.float(), size=tuple(grid), mode="nearest").to(reference_latents.dtype)
        concat = torch.cat([reference_latents, small], dim=1).unsqueeze(2)
        self.write_reference(reference_latents, timesteps, context)
        try:
            return self.denoise(noisy, timesteps, concat, features, context.repeat_interleave(f, dim=0), use_reference)
        finally:
            self.bank.clear()


# -- the folder ---------------------------------------------------------------------------------------------

def save_parts(parts: dict[str, nn.Module], folder: str, config: dict) -> None:
    folder_io.save_parts(parts, folder, check(config), CLASS_NAME)


def read_config(folder: str) -> dict:
    return folder_io.read_config(folder, check, "MegActor")


def load_parts(folder: str, config: dict, device: Any = "cpu", dtype: Any = "fp32") -> dict[str, nn.Module]:
    classes = {name: PART_CLASSES[name] for name in part_names(config)}
    return folder_io.load_parts(folder, classes, "MegActor", "megactor", device, dtype)


# -- the pipeline -------------------------------------------------------------------------------------------

class MegActorPipeline(NetPipeline):
    """A reference crop driven by a raw driving video (see the module docstring)."""

    def __init__(self, net: MegActorNet, codec: PixelCodec | VaeCodec, config: dict, image_encoder=None):
        self.net, self.codec, self.config = net.eval(), codec, check(config)
        self.image_encoder = image_encoder

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "auto", dtype: str = "auto") -> MegActorPipeline:
        local = resolve_checkpoint(folder)
        config = read_config(local)
        device, dtype = cls.placement(device, dtype)
        net = MegActorNet(**load_parts(local, config, device, dtype),
                          fusion_blocks=config.get("fusion_blocks", "midup"))
        codec = codec_from_folder(local, config["latent"], device, dtype)
        encoder = cls.image_encoder_in(local, device, dtype) if config["image_encoder"]["type"] == "clip" else None
        if encoder is None and config["image_encoder"]["type"] == "clip":
            log.warning("MegActor %s: no image_encoder/ (CLIP): the context is one zero token", local)
        return cls(net, codec, config, encoder)

    def save_pretrained(self, folder: str) -> None:
        save_parts(self.net.parts(), folder, self.config)
        self.save_side_models(folder)

    def context(self, background: np.ndarray) -> torch.Tensor:
        """(1, L, D) context of the (S, S, 3) uint8 background: CLIP's projected tokens as the official
        (visual_projection(post_layernorm(last_hidden_state))), or the background encoder's."""
        if self.image_encoder is None:
            return self.net.tokens(to_unit(background[None], self.device, self.dtype))
        pixels = torch.from_numpy(clip_pixels(background))[None].to(self.device, self.image_encoder.dtype)
        hidden = self.image_encoder(pixels).last_hidden_state
        tokens = self.image_encoder.visual_projection(self.image_encoder.vision_model.post_layernorm(hidden))
        return tokens.to(self.dtype)

    @torch.no_grad()
    def __call__(self, reference: np.ndarray, points: np.ndarray, driving: np.ndarray, driving_points: np.ndarray, *,
                 relative: bool = True, steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8 frames of `reference` (S, S, 3) moved like the driving video (DrivenPipeline);
        `relative`: the contour-preserving driving patches (the portrait keeps its face shape), else the
        driving face region as it is."""
        size, sampling, drive = self.size, self.config["sampling"], self.config.get("driving", {})
        if reference.shape != (size, size, 3):
            raise ValueError(f"reference must be ({size}, {size}, 3) uint8, got {reference.shape}")
        if driving is None or len(driving) < 1 or driving.shape[1:] != (size, size, 3):
            raise ValueError(f"MegActor is driven by the video's frames: driving must be (N, {size}, {size}, 3)")
        driving_points = np.asarray(driving_points, np.float32)[..., :2]
        if len(driving) != len(driving_points):
            raise ValueError(f"{len(driving)} driving frames but {len(driving_points)} meshes")
        n, device, dtype = len(driving), self.device, self.dtype
        steps = int(steps or sampling["steps"])
        scale = float(sampling["guidance_scale"] if guidance_scale is None else guidance_scale)

        grey = driving_frames(driving, driving_points, points, contour_preserve=relative,
                              top_margin=float(drive.get("top_margin", 0.4)),
                              bottom_margin=float(drive.get("bottom_margin", 0.1)),
                              patch_div=int(drive.get("patch_div", 8)))
        unit_ref = torch.from_numpy(reference).to(device, dtype).permute(2, 0, 1)[None] / 255.0
        features = self.net.driving_features(torch.from_numpy(grey).to(device, dtype).permute(3, 0, 1, 2)[None] / 255.0,
                                             unit_ref)
        mask = background_mask(points, size)
        context = self.context((reference * mask[..., None]).astype(np.uint8))
        reference_latents = self.codec.encode(to_unit(reference[None], device, dtype))
        grid = reference_latents.shape[-2:]
        small = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].to(device, dtype), size=tuple(grid),
                                                mode="nearest")
        concat = torch.cat([reference_latents, small], dim=1).unsqueeze(2)
        written: list[int] = []

        def predict(latents: torch.Tensor, t: torch.Tensor, frames: slice) -> torch.Tensor:
            if written != [int(t)]:  # the appearance encoder at this step's timestep, once per step
                self.net.write_reference(reference_latents, t, context)
                written[:] = [int(t)]
            f = latents.shape[2]
            ctx = context.repeat_interleave(f, dim=0)
            out = self.net.denoise(latents, t, concat, features[:, :, frames], ctx).float()
            if scale <= 1.0:
                return out
            uncond = self.net.denoise(latents, t, concat, features[:, :, frames], ctx, use_reference=False).float()
            return guided(out, uncond, scale)

        scheduler = make_scheduler(self.config["scheduler"])
        noise = initial_noise((1, self.codec.channels, n, *grid), seed, device, torch.float32, scheduler)
        window, overlap = int(sampling["context_frames"]), int(sampling["context_overlap"])
        try:  # 16-frame windows overlapping by 8, averaged every step
            return self.frames_of(sample_overlapping(predict, scheduler, noise, steps, window, overlap, progress))
        finally:
            self.net.bank.clear()


__all__ = ["CLASS_NAME", "IMAGE_ENCODER_FOLDER", "PART_CLASSES", "VAE_FOLDER", "MegActorNet", "MegActorPipeline",
           "build_parts", "load_parts", "part_names", "read_config", "save_parts"]

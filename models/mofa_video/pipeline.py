"""MOFA-Video inference (and the network training shares): a portrait animated by sparse motion, from a
driving video's landmarks (the `DrivenPipeline` interface of models/shared/driven.py) or from point
trajectories (`MofaVideoPipeline.animate_tracks`, what `facefab animate --trajectories` runs).

Pipeline folder (what `facefab train mofa-video` exports and `facefab convert mofa-video` writes):

    model_index.json   {"_class_name": "MofaVideoPipeline", "<part>": ["<library>", "<class>"], ...}
    pipeline.json      the config (models/mofa_video/config.py)
    unet/              ControlNetUNet: SVD's UNetSpatioTemporalConditionModel (stable-video-diffusion's unet/)
    controlnet/        FlowControlNet: the MOFA adapter (the official ldmk_controlnet/ or traj_controlnet/)
    cmp/               SparseToDense: the sparse-to-dense motion network (the official CMP)
    image_encoder/     ImageEmbedder (config image_encoder.type "conv"), or SVD's CLIPVisionModelWithProjection
                       ("clip", a converted folder)
    vae/               SVD's AutoencoderKLTemporalDecoder, when latent.type is "vae" (tiny: pixel latents)

Generation (the official svdxt_pipeline_ctrlnet_loop, SVD image-to-video): the reference's latents
(noise-augmented, unscaled as SVD's) are concatenated to every frame's noisy latents, its image embedding
is the cross-attention context, the added time ids are (fps, motion bucket, noise augmentation). The
motion: each frame's keypoints (the 68 iBUG points of the retargeted driving mesh, or the trajectories'
points) minus the reference's, written at the reference's points (`flow.sparse_hints`), made dense by the
CMP on the reference image; the adapter warps the reference's feature pyramid along that flow and adds its
residuals to the UNet. Euler (EDM) sampling, classifier-free guidance ramped over the frames as SVD's
(zero image latents and context unconditioned).

Long videos: the model makes `num_frames` frames at once, the reference frame first. The frames are cut
into consecutive windows of num_frames - 1 and every window is generated with the reference as its first
frame and all its flows relative to the reference (as the official loop anchors every window on the first
frame), then that first frame dropped; a short last window is padded with its last frame. Windows do not
overlap (the official also averages 7 overlapping frames every step; not done here), so consecutive windows
agree through the shared reference and the continuous motion only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler
from torch import nn

from facefab.face.mesh import to_68

from ..follow_your_emoji.landmarks import retarget
from ..follow_your_emoji.pipeline import clip_pixels
from ..shared import pipeline_folder as folder_io
from ..shared.latents import PixelCodec, VaeCodec, codec_from_folder, to_uint8, to_unit
from ..shared.net_pipeline import IMAGE_ENCODER_FOLDER, VAE_FOLDER, NetPipeline
from ..weights import load_model, resolve_checkpoint
from .config import check, latent_channels, latent_factor
from .controlnet import ControlNetUNet, FlowControlNet, ImageEmbedder
from .flow import SparseToDense, keypoint_images, sparse_hints

CLASS_NAME = "MofaVideoPipeline"
PART_CLASSES: dict[str, type] = {"unet": ControlNetUNet, "controlnet": FlowControlNet, "cmp": SparseToDense}


def adapter_kwargs(config: dict) -> dict:
    net = config["controlnet"]
    return {"conditioning_embedding_out_channels": tuple(net["conditioning_embedding_out_channels"]),
            "ldmk_embedding_out_channels": tuple(net["ldmk_embedding_out_channels"]),
            "landmarks": bool(net["landmarks"]), "flow_zeroconv": bool(net.get("flow_zeroconv", False)),
            "occlusion": net.get("occlusion")}


def part_classes(config: dict) -> dict[str, type]:
    extra = {IMAGE_ENCODER_FOLDER: ImageEmbedder} if config["image_encoder"]["type"] == "conv" else {}
    return {**PART_CLASSES, **extra}


def build_parts(config: dict, only: tuple[str, ...] | None = None) -> dict[str, nn.Module]:
    """Fresh parts of `config` (all, or `only` those); the adapter's encoder starts as a copy of the UNet's
    (ControlNet's initialisation) when both are built."""
    check(config)
    wanted = tuple(part_classes(config)) if only is None else only
    parts: dict[str, nn.Module] = {}
    if "unet" in wanted:
        parts["unet"] = ControlNetUNet(**config["unet"])
    if "controlnet" in wanted:
        parts["controlnet"] = (FlowControlNet.from_unet(parts["unet"], **adapter_kwargs(config)) if "unet" in parts
                               else FlowControlNet(**config["unet"], **adapter_kwargs(config)))
    if "cmp" in wanted:
        parts["cmp"] = SparseToDense(**config["cmp"])
    if IMAGE_ENCODER_FOLDER in wanted and config["image_encoder"]["type"] == "conv":
        parts[IMAGE_ENCODER_FOLDER] = ImageEmbedder(config["unet"]["cross_attention_dim"],
                                                    int(config["image_encoder"].get("width", 64)))
    return parts


def keypoints_of(mesh: np.ndarray, subset: str) -> np.ndarray:
    """(..., 478, 2+) mesh -> (..., K, 2) the points whose motion drives the model."""
    mesh = np.asarray(mesh, np.float32)[..., :2]
    return to_68(mesh) if subset == "ibug68" else mesh


def added_time_ids(sampling: dict, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(batch, 3): SVD's fps, motion_bucket_id and noise_aug_strength."""
    ids = [float(sampling["fps"]), float(sampling["motion_bucket_id"]), float(sampling["noise_aug_strength"])]
    return torch.tensor([ids] * batch, device=device, dtype=dtype)


def edm_scalings(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD's v-prediction EDM preconditioning of a noise level: (c_in, c_skip, c_out, c_noise)."""
    c_in = 1 / (sigma ** 2 + 1).sqrt()
    return c_in, 1 / (sigma ** 2 + 1), -sigma * c_in, 0.25 * sigma.log()


class MofaVideoNet(nn.Module):
    """The trained parts, wired: CMP -> dense flow -> adapter residuals -> SVD UNet."""

    def __init__(self, unet: ControlNetUNet, controlnet: FlowControlNet, cmp: SparseToDense,
                 image_encoder: nn.Module | None = None):
        super().__init__()
        self.unet, self.controlnet, self.cmp = unet, controlnet, cmp
        self.image_encoder = image_encoder

    @classmethod
    def fresh(cls, config: dict) -> MofaVideoNet:
        return cls(**build_parts(config))

    def parts(self) -> dict[str, nn.Module]:
        names = list(PART_CLASSES) + ([IMAGE_ENCODER_FOLDER] if isinstance(self.image_encoder, ImageEmbedder) else [])
        return {name: getattr(self, name) for name in names}

    @property
    def context_width(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    def context(self, reference: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, 1, D) image embedding (zeros without an image encoder)."""
        if isinstance(self.image_encoder, ImageEmbedder):
            return self.image_encoder(reference.to(self.image_encoder.dtype))
        return torch.zeros(len(reference), 1, self.context_width, device=reference.device, dtype=reference.dtype)

    def flows(self, reference: torch.Tensor, sparse: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """reference (B, 3, S, S) in [-1, 1], hints (B, T, 2, S, S) -> dense flows (B, T, 2, S, S)."""
        b, t = sparse.shape[:2]
        image = reference.repeat_interleave(t, dim=0).to(self.cmp.dtype)
        dense = self.cmp.dense(image, sparse.flatten(0, 1).to(image.dtype), mask.flatten(0, 1).to(image.dtype))
        return dense.reshape(b, t, *dense.shape[1:])

    def denoise(self, model_input: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, ids: torch.Tensor,
                reference: torch.Tensor, flows: torch.Tensor, marks: torch.Tensor | None,
                conditioning_scale: float = 1.0) -> torch.Tensor:
        """(B, F, 2C, h, w) scaled noisy latents + reference latents -> the UNet's (B, F, C, h, w) output."""
        dtype = self.unet.dtype
        args = (model_input.to(dtype), timestep, context.to(dtype), ids.to(dtype))
        down, mid, _ = self.controlnet(*args, controlnet_cond=reference.to(dtype), controlnet_flow=flows.to(dtype),
                                       landmarks=None if marks is None else marks.to(dtype),
                                       conditioning_scale=conditioning_scale)
        return self.unet(*args, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    def forward(self, model_input: torch.Tensor, timestep: torch.Tensor, ids: torch.Tensor, reference: torch.Tensor,
                sparse: torch.Tensor, mask: torch.Tensor, marks: torch.Tensor | None,
                keep_context: torch.Tensor | None = None) -> torch.Tensor:
        """The training forward: hints -> CMP flows -> adapter -> UNet; `keep_context` (B,) 0/1 zeroes the
        image embedding of the dropped samples (classifier-free guidance training)."""
        context = self.context(reference)
        if keep_context is not None:
            context = context * keep_context.view(-1, 1, 1).to(context.dtype)
        return self.denoise(model_input, timestep, context, ids, reference, self.flows(reference, sparse, mask), marks)


class TemporalVaeCodec(VaeCodec):
    """SVD's AutoencoderKLTemporalDecoder: its decoder takes the chunk's frame count."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        parts = [self.vae.decode(z.to(dtype) / self.scale, num_frames=len(z)).sample for z in latents.split(self.chunk)]
        return torch.cat(parts).float().clamp(-1, 1)


def codec_of(folder: str, config: dict, device, dtype) -> PixelCodec | VaeCodec:
    path = os.path.join(folder, VAE_FOLDER, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            if json.load(f).get("_class_name") == "AutoencoderKLTemporalDecoder":
                from diffusers import AutoencoderKLTemporalDecoder

                return TemporalVaeCodec(load_model(AutoencoderKLTemporalDecoder, os.path.join(folder, VAE_FOLDER),
                                                   device=device, dtype=dtype))
    return codec_from_folder(folder, config["latent"], device, dtype)


# -- the folder ----------------------------------------------------------------------------------------------

def save_parts(parts: dict[str, nn.Module], folder: str, config: dict) -> None:
    folder_io.save_parts(parts, folder, check(config), CLASS_NAME)


def read_config(folder: str) -> dict:
    return folder_io.read_config(folder, check, "MOFA-Video")


def load_parts(folder: str, device: Any = "cpu", dtype: Any = "fp32",
               config: dict | None = None) -> dict[str, nn.Module]:
    config = config or read_config(folder)
    return folder_io.load_parts(folder, part_classes(config), "MOFA-Video", "mofa-video", device, dtype)


# -- the pipeline ----------------------------------------------------------------------------------------------

class MofaVideoPipeline(NetPipeline):
    """A reference crop moved by sparse motion (see the module docstring)."""

    def __init__(self, net: MofaVideoNet, codec: PixelCodec | VaeCodec, config: dict, image_encoder=None):
        self.net, self.codec, self.config = net.eval(), codec, check(config)
        self.image_encoder = image_encoder  # SVD's CLIP (config image_encoder.type "clip"), or None

    @classmethod
    def fresh(cls, config: dict) -> MofaVideoPipeline:
        return cls(MofaVideoNet.fresh(config), PixelCodec(latent_factor(config)), config)

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "auto", dtype: str = "auto") -> MofaVideoPipeline:
        local = resolve_checkpoint(folder)
        config = read_config(local)
        device, dtype = cls.placement(device, dtype)
        net = MofaVideoNet(**load_parts(local, device, dtype, config))
        clip = cls.image_encoder_in(local, device, dtype) if config["image_encoder"]["type"] == "clip" else None
        return cls(net, codec_of(local, config, device, dtype), config, clip)

    def save_pretrained(self, folder: str) -> None:
        save_parts(self.net.parts(), folder, self.config)
        self.save_side_models(folder)

    def context(self, reference: np.ndarray, unit: torch.Tensor) -> torch.Tensor:
        if self.image_encoder is not None:
            pixels = torch.from_numpy(clip_pixels(reference))[None].to(self.device, self.image_encoder.dtype)
            return self.image_encoder(pixels).image_embeds[:, None].to(self.dtype)
        return self.net.context(unit)

    @torch.no_grad()
    def __call__(self, reference: np.ndarray, points: np.ndarray, driving: np.ndarray, driving_points: np.ndarray, *,
                 relative: bool = True, steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8 frames of `reference` moved like the driving meshes (see DrivenPipeline): the
        retargeted driving keypoints' motion from the reference's keypoints is the sparse motion."""
        driving_points = np.asarray(driving_points, np.float32)
        if driving_points.ndim != 3 or len(driving_points) < 1:
            raise ValueError(f"driving_points must be (N, 478, 2), got {driving_points.shape}")
        if driving is not None and len(driving) != len(driving_points):
            raise ValueError(f"{len(driving)} driving frames but {len(driving_points)} meshes")
        subset = self.config["keypoints"]["subset"]
        start = keypoints_of(points, subset)
        targets = keypoints_of(retarget(points, driving_points, relative), subset)
        return self.generate(reference, start, targets, steps=steps, guidance_scale=guidance_scale, seed=seed,
                             progress=progress)

    @torch.no_grad()
    def animate_tracks(self, reference: np.ndarray, tracks: np.ndarray, *, steps: int | None = None,
                       guidance_scale: float | None = None, seed: int = 0,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """`reference` (S, S, 3) uint8 moved along `tracks` (K, N, 2) in its pixels (frame 0: where each
        point sits on it; NaN: unseen, no hint that frame) -> (N, S, S, 3) uint8 (MOFA's trajectory control)."""
        tracks = np.asarray(tracks, np.float32)
        if tracks.ndim != 3 or tracks.shape[2] != 2 or tracks.shape[1] < 1:
            raise ValueError(f"tracks must be (K, N, 2), got {tracks.shape}")
        return self.generate(reference, tracks[:, 0], tracks.transpose(1, 0, 2), steps=steps,
                             guidance_scale=guidance_scale, seed=seed, progress=progress)

    @torch.no_grad()
    def generate(self, reference: np.ndarray, start: np.ndarray, targets: np.ndarray, *, steps: int | None = None,
                 guidance_scale: float | None = None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """`reference` (S, S, 3) uint8 with its points `start` (K, 2) -> one frame per `targets` (N, K, 2):
        the points moved there (the windows of the module docstring)."""
        size, sampling = self.size, self.config["sampling"]
        if reference.shape != (size, size, 3):
            raise ValueError(f"reference must be ({size}, {size}, 3) uint8, got {reference.shape}")
        n, window = len(targets), int(self.config["num_frames"])
        steps = int(steps or sampling["steps"])
        high = float(sampling["max_guidance_scale"] if guidance_scale is None else guidance_scale)
        low = min(float(sampling["min_guidance_scale"]), high)
        device, dtype = self.device, self.dtype
        unit = to_unit(reference[None], device, dtype)
        context = self.context(reference, unit)
        generator = torch.Generator().manual_seed(int(seed))
        noisy_reference = unit + float(sampling["noise_aug_strength"]) * torch.randn(unit.shape, generator=generator
                                                                                     ).to(unit)
        cond_latents = self.codec.encode(noisy_reference) / getattr(self.codec, "scale", 1.0)
        ids = added_time_ids(sampling, 1, device, dtype)
        radius = int(self.config["keypoints"]["radius"])
        out, chunks = [], list(range(0, n, window - 1))
        for i, first in enumerate(chunks):
            frames = np.arange(first, first + window - 1).clip(max=n - 1)
            sparse, mask = sparse_hints(start, targets[frames], size)
            marks = None
            if self.config["controlnet"]["landmarks"]:
                images = keypoint_images(np.concatenate([start[None], targets[frames]]), size, radius)
                marks = torch.from_numpy(images).to(device, dtype).permute(0, 3, 1, 2)[None] / 255.0
            flows = self.net.flows(unit, torch.from_numpy(sparse)[None].to(device),
                                   torch.from_numpy(mask)[None].to(device))
            latents = self._window(unit, cond_latents, context, ids, flows, marks, steps, low, high, seed + i)
            decoded = to_uint8(self.codec.decode(latents[0].to(dtype)))
            out.append(decoded[1:][: min(window - 1, n - first)])
            if progress:
                progress(i + 1, len(chunks))
        return np.concatenate(out)

    def _window(self, unit, cond_latents, context, ids, flows, marks, steps: int, low: float, high: float,
                seed: int) -> torch.Tensor:
        """One window's (1, F, C, h, w) latents, the reference first (Euler, SVD's guidance ramp)."""
        f, device, dtype = int(self.config["num_frames"]), self.device, self.dtype
        h = self.size // self.codec.factor
        scheduler = EulerDiscreteScheduler(**self.config["scheduler"])
        scheduler.set_timesteps(steps, device=device)
        generator = torch.Generator().manual_seed(int(seed))
        latents = (torch.randn((1, f, latent_channels(self.config), h, h), generator=generator)
                   * scheduler.init_noise_sigma).to(device, torch.float32)
        image = cond_latents[:, None].expand(-1, f, -1, -1, -1).to(dtype)
        scale = float(self.config["sampling"]["conditioning_scale"])
        ramp = torch.linspace(low, high, f, device=device).view(1, f, 1, 1, 1)
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(latents, t).to(dtype)
            pred = self.net.denoise(torch.cat([x, image], 2), t, context, ids, unit, flows, marks, scale).float()
            if high > 1.0:
                uncond = self.net.denoise(torch.cat([x, torch.zeros_like(image)], 2), t, torch.zeros_like(context), ids,
                                          unit, flows, marks, scale).float()
                pred = uncond + ramp * (pred - uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
        return latents


__all__ = ["CLASS_NAME", "MofaVideoNet", "MofaVideoPipeline", "added_time_ids", "build_parts", "edm_scalings",
           "keypoints_of", "load_parts", "read_config", "save_parts"]

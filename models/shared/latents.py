"""The latent spaces of the diffusion generators: SD's VAE, or pixels (for tiny CPU configs).

Both take and give images as float (N, 3, H, W) in [-1, 1]:
- `VaeCodec(vae)`: an `AutoencoderKL` (SD1.5's `vae/` folder), latents scaled by its `scaling_factor`.
- `PixelCodec(factor)`: the image area-downsampled `factor` times (3 channels), decoded by bicubic
  upsampling. A tiny model learns pixel-space diffusion at low resolution in a few CPU minutes, so a
  test's output is a visible (blurry) face instead of the noise a random VAE would decode.
`codec_from_folder` picks one from a pipeline folder: its `vae/` subfolder, else the `latent` section
of the pipeline config ({"type": "pixel", "factor": 8}).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F


class PixelCodec:
    channels = 3

    def __init__(self, factor: int = 8):
        if factor < 1:
            raise ValueError(f"pixel latent factor must be >= 1, got {factor}")
        self.factor = factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, self.factor) if self.factor > 1 else images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return latents.clamp(-1, 1)
        return F.interpolate(latents, scale_factor=self.factor, mode="bicubic", align_corners=False).clamp(-1, 1)

    def to(self, *args, **kwargs) -> PixelCodec:
        return self

    def config(self) -> dict:
        return {"type": "pixel", "factor": self.factor}


class VaeCodec:
    def __init__(self, vae, chunk: int = 8):
        self.vae, self.chunk = vae, chunk
        self.channels = vae.config.latent_channels
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scale = vae.config.scaling_factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        parts = [self.vae.encode(x.to(dtype)).latent_dist.mean for x in images.split(self.chunk)]
        return torch.cat(parts) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        parts = [self.vae.decode(z.to(dtype) / self.scale).sample for z in latents.split(self.chunk)]
        return torch.cat(parts).float().clamp(-1, 1)

    def to(self, *args, **kwargs) -> VaeCodec:
        self.vae.to(*args, **kwargs)
        return self

    def config(self) -> dict:
        return {"type": "vae"}


def codec_from_folder(folder: str, config: dict | None, device=None, dtype=None) -> PixelCodec | VaeCodec:
    """The codec of a pipeline folder: `folder/vae/` (AutoencoderKL) when present, else `config`
    ({"type": "pixel", "factor": F}); a config that asks for a VAE the folder lacks is an error."""
    from ..weights import CheckpointError, load_model

    config = config or {"type": "pixel", "factor": 8}
    if os.path.isdir(os.path.join(folder, "vae")):
        from diffusers import AutoencoderKL

        return VaeCodec(load_model(AutoencoderKL, os.path.join(folder, "vae"), device=device or "auto",
                                    dtype=dtype or "auto"))
    if config.get("type") == "vae":
        raise CheckpointError(f"{folder}: the pipeline uses an SD VAE but has no vae/ folder "
                              "(copy SD1.5's vae/ into it, e.g. with `facefab convert`)")
    return PixelCodec(int(config.get("factor", 8)))


def to_unit(images_uint8, device=None, dtype=torch.float32) -> torch.Tensor:
    """(N, H, W, 3) uint8 (numpy or tensor) -> (N, 3, H, W) float in [-1, 1]."""
    x = torch.as_tensor(images_uint8, device=device)
    return x.permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0


def to_uint8(images: torch.Tensor):
    """(N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8 numpy."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


__all__ = ["PixelCodec", "VaeCodec", "codec_from_folder", "to_uint8", "to_unit"]

"""What an inference pipeline around one torch network and a config dict has by itself: its square `size`
(config["size"]), the device and dtype its network sits on, the device / dtype a `from_pretrained` places it
on ("auto" resolved as facefab.models.weights does), and the side models of its folder: `vae/` (its codec,
when a VaeCodec) and `image_encoder/` (a transformers CLIPVisionModelWithProjection, optional)."""

from __future__ import annotations

import os
from typing import Any

import torch

VAE_FOLDER, IMAGE_ENCODER_FOLDER = "vae", "image_encoder"


class NetPipeline:
    net: torch.nn.Module
    config: dict
    codec: Any = None
    image_encoder: Any = None

    @property
    def size(self) -> int:
        return int(self.config["size"])

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    @staticmethod
    def placement(device: Any = "auto", dtype: Any = "auto") -> tuple[torch.device, torch.dtype]:
        from ..weights import pick_device, pick_dtype

        device = device if isinstance(device, torch.device) else pick_device(device)
        return device, dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, device)

    def frames_of(self, latents: torch.Tensor):
        """(1, C, N, h, w) latents -> (N, S, S, 3) uint8 RGB frames through the pipeline's codec."""
        from .latents import to_uint8

        return to_uint8(self.codec.decode(latents[0].transpose(0, 1).to(self.dtype)))

    @staticmethod
    def image_encoder_in(folder: str, device: torch.device, dtype: torch.dtype):
        """The CLIPVisionModelWithProjection of `folder`/image_encoder/ (eval, placed), or None without one."""
        path = os.path.join(folder, IMAGE_ENCODER_FOLDER)
        if not os.path.isdir(path):
            return None
        from transformers import CLIPVisionModelWithProjection

        return CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True).to(device=device,
                                                                                            dtype=dtype).eval()

    def save_side_models(self, folder: str) -> None:
        """vae/ (a VaeCodec's AutoencoderKL) and image_encoder/ where the pipeline has them, as safetensors."""
        for name, model in ((VAE_FOLDER, getattr(self.codec, "vae", None)), (IMAGE_ENCODER_FOLDER, self.image_encoder)):
            if model is not None:
                model.save_pretrained(os.path.join(folder, name), safe_serialization=True)


__all__ = ["IMAGE_ENCODER_FOLDER", "VAE_FOLDER", "NetPipeline"]

"""The Identity Encoder's face-ID backbone: aligned source crop -> (B, id_dim) embedding.

- `FaceIdEncoder` (identity.backbone "conv", the weight-free default): stride-2 conv stages (SiLU), a global
  average pool and a linear map to `id_dim`, L2-normalised like an ArcFace embedding. It has no
  face-recognition pretraining: it learns, with the rest of the system, whatever identity the
  self-supervised reconstruction needs (same clip, so same person), which makes it a weaker identity
  signal than ArcFace across people.
- `load_arcface(path)` (identity.backbone "arcface"): a TorchScript face-recognition model (e.g. an
  insightface iresnet exported with torch.jit.trace), frozen; it sees the crop resized to
  identity.input_size in [-1, 1] (the official feeds glint360k ArcFace the 5-point-aligned crop at 128 px).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class FaceIdEncoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, id_dim: int = 512, channels: tuple[int, ...] = (32, 64, 128, 256), input_size: int = 128):
        super().__init__()
        widths = [3, *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size=3, stride=2, padding=1)
                                   for a, b in itertools.pairwise(widths))
        self.proj = nn.Linear(widths[-1], id_dim)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, id_dim), unit length."""
        size = int(self.config.input_size)
        x = F.interpolate(face, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        for conv in self.convs:
            x = F.silu(conv(x))
        return F.normalize(self.proj(x.mean(dim=(2, 3))), dim=-1)


class ArcFace(nn.Module):
    """A frozen TorchScript face-ID model behind FaceIdEncoder's interface (resize, then embed, normalised)."""

    def __init__(self, model: torch.jit.ScriptModule, input_size: int):
        super().__init__()
        self.model, self.input_size = model.eval(), input_size
        self.requires_grad_(False)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(face, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return F.normalize(self.model(x).float(), dim=-1)


def load_arcface(path: str, input_size: int = 128) -> ArcFace:
    from ..weights import resolve_checkpoint

    return ArcFace(torch.jit.load(resolve_checkpoint(path) if "://" in path else path, map_location="cpu"),
                   input_size)


__all__ = ["ArcFace", "FaceIdEncoder", "load_arcface"]

"""The pose / landmark guider of the AnimateAnyone family (V-Express' V-kps guider, Follow-Your-Emoji's
landmark guider: the same official module) and how its features enter the denoiser.

- `Guider`: the official module (same parameter names and shapes): conv_in, then per level a 3x3 conv and
  a stride-2 3x3 conv (`blocks`), SiLU after each, and a zero-initialised conv_out to the UNet's first
  width. The official InflatedConv3d is a 2D conv applied to every frame; here (B, 3, F, H, W) inputs are
  folded into the batch the same way.
- `guider_conditioning(denoiser, features)`: within, the features are added to the output of the
  denoiser's conv_in (the official UNet3DConditionModel's `sample = conv_in(sample) + cond_fea`).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class Guider(ModelMixin, ConfigMixin):
    """Condition image -> features at the latent resolution with the UNet's first width (zero at init)."""

    @register_to_config
    def __init__(self, conditioning_embedding_channels: int = 320, conditioning_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (16, 32, 96, 256)):
        super().__init__()
        widths = list(block_out_channels)
        self.conv_in = nn.Conv2d(conditioning_channels, widths[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in itertools.pairwise(widths):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(widths[-1], conditioning_embedding_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C, H/2^k, W/2^k); (B, 3, F, H, W) -> (B, C, F, h, w)."""
        if conditioning.ndim == 5:
            b, c, f = conditioning.shape[:3]
            flat = conditioning.transpose(1, 2).reshape(b * f, c, *conditioning.shape[3:])
            out = self(flat)
            return out.reshape(b, f, *out.shape[1:]).transpose(1, 2)
        x = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


@contextmanager
def guider_conditioning(denoiser: nn.Module, features: torch.Tensor):
    """Within: `features` (B, C, F, h, w) are added to the output of the denoiser's conv_in; the denoiser
    folds frames into its batch b-major, so they are folded the same way."""
    b, c, f, h, w = features.shape
    flat = features.transpose(1, 2).reshape(b * f, c, h, w)
    handle = denoiser.conv_in.register_forward_hook(lambda _module, _args, out: out + flat.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


__all__ = ["Guider", "guider_conditioning"]

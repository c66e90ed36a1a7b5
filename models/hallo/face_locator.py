"""Hallo's FaceLocator: the face-region mask image -> features added to the denoiser after its conv_in
(the official `UNet3DConditionModel`: `sample = conv_in(sample) + mask_cond_fea`).

Module names follow hallo/models/face_locator.py (`conv_in`, `blocks.i`, `conv_out`), so the released
`face_locator.*` weights load by name. The official InflatedConv3d is a Conv2d applied to every frame;
here the same Conv2d layers run on (N, C, H, W) or, folded, on (B, C, F, H, W)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class FaceLocator(ModelMixin, ConfigMixin):
    """(N, conditioning_channels, H, W) or (B, C, F, H, W) mask in [0, 1] -> (N or B, embedding, [F,] H/2^k, W/2^k)
    with k = len(block_out_channels) - 1. The output conv starts at zero: a fresh locator adds nothing."""

    @register_to_config
    def __init__(self, conditioning_embedding_channels: int = 320, conditioning_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for channel_in, channel_out in itertools.pairwise(block_out_channels):
            self.blocks.append(nn.Conv2d(channel_in, channel_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(channel_in, channel_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        video = conditioning.dim() == 5
        if video:
            b, c, f, h, w = conditioning.shape
            conditioning = conditioning.transpose(1, 2).reshape(b * f, c, h, w)
        x = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            x = F.silu(block(x))
        x = self.conv_out(x)
        if video:
            x = x.reshape(b, f, *x.shape[1:]).transpose(1, 2)
        return x


__all__ = ["FaceLocator"]

"""The Spatial Condition Generator's Adapting Area Predictor (the official net_seg_res18, model_seg_unet.UNet):
[source image, target landmark image] (B, 6, H, W) in [-1, 1] -> (B, 1, H, W) logits of the region a
reenactment changes (the source's head where it was and where the landmarks put it). A small conv UNet
here (stride-2 stages, upsampling with skips); trained with the system against the union of the two faces'
dilated hulls."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class AdaptingAreaPredictor(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_channels: int = 6, channels: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        widths = list(channels)
        self.stem = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(a, b, kernel_size=3, stride=2, padding=1)
                                  for a, b in itertools.pairwise(widths))
        self.up = nn.ModuleList(nn.Conv2d(b + a, a, kernel_size=3, padding=1)
                                for a, b in itertools.pairwise(widths))
        self.out = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, source: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.stem(torch.cat([source, landmarks], dim=1)))
        skips = [x]
        for conv in self.down:
            x = F.silu(conv(x))
            skips.append(x)
        skips.pop()
        for conv in reversed(self.up):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = F.silu(conv(torch.cat([x, skip], dim=1)))
        return self.out(x)


__all__ = ["AdaptingAreaPredictor"]

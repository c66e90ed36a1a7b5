"""MegActor's driving-video encoder with its AdaLN fusion of the reference, and the small background
encoder that stands in for CLIP where no CLIP weights are at hand.

`ConditionInputLayer` is the official `ConvInputLayer` (animate/unet_magic_noiseAttenST_Ada/
unet_controlnet.py, `unet.condition_input_layer` of the released checkpoint), with its parameter names and
shapes:

- `spatial_conv_layers.{i}`: per stage a 3x3 conv (`.0`) and a conv to the stage's width (`.2`): 4x4
  stride 2 in every stage but the last (3x3 stride 1), SiLU after each. The official widths are 3 -> 16,
  32, 64, 128 (the first stage's 3x3 conv keeps the 3 channels), 512 px -> 64.
- `refer_convs`: the AdaLN path over the reference image: a 3x3 conv to the first width, then per width a
  4x4 stride-2 conv and a 3x3 conv (SiLU after each), and a last conv whose kernel covers what is left
  (4x4 at 512 px), down to one pixel; `refer_linears` (Linear 512 -> 256, SiLU) and `refer_linears_out`
  (Linear 256 -> 2 x 128, zero at init): a per-channel scale and shift of the driving features,
  `x * (1 + scale) + shift`, the same for every frame.
- `spatial_conv_out`: 1x1 conv to the latent channels; its output is concatenated to the denoiser's input.

The official applies the spatial layers to every frame (InflatedConv3d) and has optional temporal modules
between them (`use_pose_guider_motion`, off in the released configs; not built here). Convs start He-normal
with zero biases (the official `_initialize_weights`).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


def _he_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan = m.kernel_size[0] * m.kernel_size[1] * m.in_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _stage(c_in: int, c_out: int, down: bool) -> nn.Sequential:
    second = nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1) if down else \
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
    return nn.Sequential(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1), nn.SiLU(), second, nn.SiLU())


class ConditionInputLayer(ModelMixin, ConfigMixin):
    """Driving frames (B, 3, F, H, W) in [0, 1] (+ the reference (B, 3, H, W) in [0, 1] for the AdaLN
    fusion) -> (B, C, F, H/2^k, W/2^k) features (see the module docstring)."""

    @register_to_config
    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128), conditioning_embedding_channels: int = 4,
                 in_channels: int = 3, use_refer_ada: bool = True,
                 refer_channels: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256, 512), refer_hidden: int = 256,
                 sample_size: int = 512):
        super().__init__()
        widths = [in_channels, *channels]
        self.spatial_conv_layers = nn.ModuleList(
            _stage(c_in, c_out, down=i < len(channels) - 1)
            for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)))
        self.spatial_conv_out = nn.Conv2d(widths[-1], conditioning_embedding_channels, kernel_size=1)
        _he_init(self.spatial_conv_layers)
        _he_init(self.spatial_conv_out)
        if not use_refer_ada:
            return
        refer = list(refer_channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, refer[0], kernel_size=3, padding=1), nn.SiLU()]
        for c_in, c_out in itertools.pairwise(refer):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.SiLU(),
                       nn.Conv2d(c_out, c_out, kernel_size=3, padding=1), nn.SiLU()]
        left = sample_size // 2 ** (len(refer) - 1)  # what the stride-2 convs leave: one conv covers it
        layers += [nn.Conv2d(refer[-1], refer[-1], kernel_size=left), nn.SiLU()]
        self.refer_convs = nn.Sequential(*layers)
        self.refer_linears = nn.Sequential(nn.Linear(refer[-1], refer_hidden), nn.SiLU())
        self.refer_linears_out = nn.Sequential(nn.Linear(refer_hidden, 2 * widths[-1]))
        nn.init.zeros_(self.refer_linears_out[0].weight)
        nn.init.zeros_(self.refer_linears_out[0].bias)
        _he_init(self.refer_convs)

    def modulation(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) reference in [0, 1] -> the AdaLN (scale, shift), each (B, C)."""
        x = self.refer_convs(reference * 2.0 - 1.0).flatten(1)
        return self.refer_linears_out(self.refer_linears(x)).chunk(2, dim=1)

    def forward(self, driving: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        b, _, f, h, w = driving.shape
        x = (driving * 2.0 - 1.0).transpose(1, 2).reshape(b * f, -1, h, w)
        for layer in self.spatial_conv_layers:
            x = layer(x)
        if self.config.use_refer_ada:
            if reference is None:
                raise ValueError("this driving encoder fuses the reference image (use_refer_ada): pass it")
            scale, shift = (m.repeat_interleave(f, dim=0)[:, :, None, None] for m in self.modulation(reference))
            x = x * (1.0 + scale) + shift
        x = self.spatial_conv_out(x)
        return x.reshape(b, f, *x.shape[1:]).transpose(1, 2)


class BackgroundEncoder(ModelMixin, ConfigMixin):
    """The reference's background (B, 3, H, W) in [-1, 1] -> (B, tokens, width) cross-attention tokens: stride-2
    convs, an average pool to a sqrt(tokens)-square grid, a linear map and a LayerNorm. Trained with the
    rest (the configs without CLIP weights); the CLIP one is transformers' CLIPVisionModelWithProjection."""

    @register_to_config
    def __init__(self, tokens: int = 16, width: int = 768, channels: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"tokens must be a square number, got {tokens}")
        widths = [3, *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size=3, stride=2, padding=1)
                                   for a, b in itertools.pairwise(widths))
        self.proj = nn.Linear(widths[-1], width)
        self.norm = nn.LayerNorm(width)
        self.side = side

    def forward(self, background: torch.Tensor) -> torch.Tensor:
        x = background
        for conv in self.convs:
            x = F.silu(conv(x))
        x = F.adaptive_avg_pool2d(x, self.side).flatten(2).transpose(1, 2)
        return self.norm(self.proj(x))


__all__ = ["BackgroundEncoder", "ConditionInputLayer"]

"""MOFA-Video's adapter and the video UNet it drives, with the official parameter names and shapes.

- `FlowControlNet`: the official models/ldmk_ctrlnet.py (keypoint) / traj_ctrlnet.py (trajectory)
  `FlowControlNet(ControlNetSDVModel)`: the encoder half of SVD's UNet (`conv_in`, `time_proj`,
  `time_embedding`, `add_time_proj`, `add_embedding`, `down_blocks`, `mid_block`: diffusers'
  UNetSpatioTemporalConditionModel names) with the ControlNet outputs (`controlnet_down_blocks.i`,
  `controlnet_mid_block`: zero 1x1 convs) and the motion adapter:
  * `controlnet_cond_embedding` (the reference image -> latent grid, first UNet width; conv_in, blocks.i,
    conv_out zero) and `flow_encoder.encoders.i.conv_in` (its deeper features, stride 2 each, the UNet's
    widths): the reference feature pyramid;
  * each level forward-warped to every later frame along the dense flow (softsplat 'avg', the flow
    resized to the level and divided by its scale), through `occlusions['s']` (ForegroundMatting: an
    hourglass predicts an occlusion mask and an inpainted feature) and `zero_outs['s']` (zero 1x1 convs;
    s = the level's downscale from the image: 8, 16, 32, 64 for SVD), the reference frame's own features
    first; the trajectory variant has no occlusion nets and `flow_encoder.zeroconvs.i` instead;
  * `controlnet_ldmk_embedding` (keypoint variant): every frame's keypoint image -> latent grid features,
    added with the warped features where the width is the first UNet width;
  the warped features are added to the encoder's activations after conv_in and after every down block
  (the deepest again before the mid block), exactly where the official adds them.
- `ControlNetUNet`: diffusers' UNetSpatioTemporalConditionModel (SVD's unet, the same state dict) whose
  forward also takes `down_block_additional_residuals` / `mid_block_additional_residual` (the official
  UNetSpatioTemporalConditionControlNetModel), added to the skip connections the up blocks read and to the
  mid block's output.
- `ImageEmbedder`: a small conv image encoder -> one context token (stands in for SVD's CLIP image
  embedding where there are no CLIP weights).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, UNetSpatioTemporalConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block
from torch import nn

from ..shared.guider import Guider
from .flow import softsplat_average


def _zero(module: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


def _per_block(value, count: int) -> list:
    return [value] * count if isinstance(value, int) else list(value)


# -- the occlusion net (official models/occlusion/hourglass.py) ------------------------------------------------

class _ConvReLU(nn.Module):
    """The official DownBlock2d / UpBlock2d: a 3x3 conv and ReLU (no resampling)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class HourglassEncoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        width = [in_features] + [min(max_features, block_expansion * 2 ** (i + 1)) for i in range(num_blocks)]
        self.down_blocks = nn.ModuleList(_ConvReLU(a, b) for a, b in itertools.pairwise(width))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.down_blocks:
            x = block(x)
            outs.append(x)
        return outs


class HourglassDecoder(nn.Module):
    def __init__(self, block_expansion: int, num_blocks: int, max_features: int):
        super().__init__()
        self.up_blocks = nn.ModuleList(
            _ConvReLU((1 if i == num_blocks - 1 else 2) * min(max_features, block_expansion * 2 ** (i + 1)),
                      min(max_features, block_expansion * 2 ** i)) for i in reversed(range(num_blocks)))

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out = None
        for block in self.up_blocks:
            x = skips.pop()
            out = block(x if out is None else torch.cat([x, out], 1))
        return out


class Hourglass(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, num_blocks, max_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class ForegroundMatting(nn.Module):
    """(reference features, flow, warped features) -> (warped * mask + inpainted * (1 - mask), mask)."""

    def __init__(self, num_channels: int, num_blocks: int = 3, block_expansion: int = 64, max_features: int = 512):
        super().__init__()
        self.hourglass = Hourglass(block_expansion, num_channels * 2 + 2, num_blocks, max_features)
        self.matting_mask = nn.Conv2d(block_expansion, 1, kernel_size=7, padding=3)
        self.matting = nn.Conv2d(block_expansion, num_channels, kernel_size=7, padding=3)

    def forward(self, reference: torch.Tensor, flow: torch.Tensor, warped: torch.Tensor):
        out = self.hourglass(torch.cat([reference, flow, warped], 1))
        mask = torch.sigmoid(self.matting_mask(out))
        return warped * mask + self.matting(out) * (1 - mask), mask


# -- the reference feature pyramid (official FlowControlNetFirstFrameEncoder) -----------------------------------

class _EncoderLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, downsample: bool = True):
        super().__init__()
        self.conv_in = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2 if downsample else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.conv_in(x))


class FirstFrameEncoder(nn.Module):
    def __init__(self, c_in: int, channels: list[int], use_zeroconv: bool = False):
        super().__init__()
        self.encoders = nn.ModuleList()
        if use_zeroconv:
            self.zeroconvs = nn.ModuleList()
        for c_out in channels:
            self.encoders.append(_EncoderLayer(c_in, c_out))
            if use_zeroconv:
                self.zeroconvs.append(_zero(nn.Conv2d(c_out, c_out, kernel_size=1)))
            c_in = c_out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x)
            out.append(self.zeroconvs[i](x) if hasattr(self, "zeroconvs") else x)
        return out


# -- time embedding and the SVD encoder pass, shared by the adapter and the UNet ---------------------------------

def time_embedding(model, sample: torch.Tensor, timestep, added_time_ids: torch.Tensor) -> torch.Tensor:
    """(B*F, D) embedding of the (B,) timesteps and (B, 3) added time ids, repeated per frame (SVD's)."""
    batch, frames = sample.shape[:2]
    timesteps = torch.as_tensor(timestep, device=sample.device)
    timesteps = (timesteps[None] if timesteps.ndim == 0 else timesteps).expand(batch)
    emb = model.time_embedding(model.time_proj(timesteps).to(sample.dtype))
    added = model.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
    return (emb + model.add_embedding(added)).repeat_interleave(frames, dim=0)


class FlowControlNet(ModelMixin, ConfigMixin):
    """The MOFA adapter (see the module docstring). Inputs: sample (B, F, C, h, w) (noisy latents and the
    reference latents, concatenated), timestep, encoder_hidden_states (B, 1, D), added_time_ids (B, 3),
    controlnet_cond (B, 3, H, W) the reference in [-1, 1], controlnet_flow (B, F-1, 2, H, W) dense flow from
    the reference to frames 1.. in image pixels, landmarks (B, F, 3, H, W) keypoint images in [0, 1]."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, sample_size: int | None = None, in_channels: int = 8, out_channels: int = 4,
                 down_block_types: tuple[str, ...] = ("CrossAttnDownBlockSpatioTemporal",) * 3
                 + ("DownBlockSpatioTemporal",),
                 up_block_types: tuple[str, ...] = ("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
                 block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280), addition_time_embed_dim: int = 256,
                 projection_class_embeddings_input_dim: int = 768, layers_per_block: int | tuple[int, ...] = 2,
                 cross_attention_dim: int | tuple[int, ...] = 1024, transformer_layers_per_block: int = 1,
                 num_attention_heads: int | tuple[int, ...] = (5, 10, 10, 20), num_frames: int = 25,
                 conditioning_channels: int = 3,
                 conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
                 ldmk_embedding_out_channels: tuple[int, ...] = (16, 32, 64, 128), landmarks: bool = True,
                 flow_zeroconv: bool = False, occlusion: dict | None = None):
        super().__init__()
        widths = list(block_out_channels)
        n = len(down_block_types)
        heads, cross = _per_block(num_attention_heads, n), _per_block(cross_attention_dim, n)
        layers, tlayers = _per_block(layers_per_block, n), _per_block(transformer_layers_per_block, n)
        time_dim = widths[0] * 4
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(widths[0], True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(widths[0], time_dim)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_dim)
        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([_zero(nn.Conv2d(widths[0], widths[0], kernel_size=1))])
        c_out = widths[0]
        for i, kind in enumerate(down_block_types):
            c_in, c_out, final = c_out, widths[i], i == n - 1
            self.down_blocks.append(get_down_block(
                kind, num_layers=layers[i], transformer_layers_per_block=tlayers[i], in_channels=c_in,
                out_channels=c_out, temb_channels=time_dim, add_downsample=not final, resnet_eps=1e-5,
                cross_attention_dim=cross[i], num_attention_heads=heads[i], resnet_act_fn="silu"))
            for _ in range(layers[i] + (0 if final else 1)):
                self.controlnet_down_blocks.append(_zero(nn.Conv2d(c_out, c_out, kernel_size=1)))
        self.controlnet_mid_block = _zero(nn.Conv2d(widths[-1], widths[-1], kernel_size=1))
        self.mid_block = UNetMidBlockSpatioTemporal(widths[-1], temb_channels=time_dim,
                                                    transformer_layers_per_block=tlayers[-1],
                                                    cross_attention_dim=cross[-1], num_attention_heads=heads[-1])
        # the motion adapter
        self.flow_encoder = FirstFrameEncoder(widths[0], widths[:-1], use_zeroconv=flow_zeroconv)
        self.controlnet_cond_embedding = Guider(widths[0], conditioning_channels,
                                                tuple(conditioning_embedding_out_channels))
        if landmarks:
            self.controlnet_ldmk_embedding = Guider(widths[0], conditioning_channels,
                                                    tuple(ldmk_embedding_out_channels))
        factor = 2 ** (len(conditioning_embedding_out_channels) - 1)
        self.scales = [factor * 2 ** i for i in range(len(widths))]  # the pyramid's downscales from the image
        level_widths = [widths[0], *widths[:-1]]
        if occlusion:
            self.zero_outs = nn.ModuleDict({str(s): _zero(nn.Conv2d(c, c, kernel_size=1))
                                            for s, c in zip(self.scales, level_widths)})
            self.occlusions = nn.ModuleDict({str(s): ForegroundMatting(c, int(occlusion.get("num_blocks", 3)),
                                                                       int(occlusion.get("block_expansion", 64)),
                                                                       int(occlusion.get("max_features", 512)))
                                             for s, c in zip(self.scales, level_widths)})
        self.gradient_checkpointing = False

    @classmethod
    def from_unet(cls, unet: UNetSpatioTemporalConditionModel, **adapter) -> FlowControlNet:
        """A fresh adapter whose encoder copies `unet`'s (ControlNet's initialisation)."""
        keys = ("sample_size", "in_channels", "out_channels", "down_block_types", "up_block_types",
                "block_out_channels", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
                "layers_per_block", "cross_attention_dim", "transformer_layers_per_block", "num_attention_heads",
                "num_frames")
        net = cls(**{k: unet.config[k] for k in keys}, **adapter)
        theirs = unet.state_dict()
        shared = {k: v for k, v in theirs.items() if k.split(".")[0] in
                  ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")}
        net.load_state_dict(shared, strict=False)
        return net

    def warp(self, features: torch.Tensor, flows: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, h, w) reference features and (B, T, 2, h, w) flows at their level -> (B, T, C, h, w) the
        features splatted to each frame (+ occlusion nets and zero convs), (B, T, 1, h, w) masks or None."""
        b, t = flows.shape[:2]
        reference = features.repeat_interleave(t, dim=0)
        flat = flows.flatten(0, 1)
        warped = softsplat_average(reference, flat)
        masks = None
        if hasattr(self, "occlusions"):
            warped, masks = self.occlusions[str(scale)](reference, flat.to(reference.dtype), warped)
            warped = self.zero_outs[str(scale)](warped)
            masks = masks.reshape(b, t, *masks.shape[1:])
        return warped.reshape(b, t, *warped.shape[1:]), masks

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, controlnet_cond: torch.Tensor, controlnet_flow: torch.Tensor,
                landmarks: torch.Tensor | None = None, conditioning_scale: float = 1.0):
        """-> (down residuals (list of (B*F, C, h, w)), mid residual, occlusion masks per level)."""
        batch, frames = sample.shape[:2]
        emb = time_embedding(self, sample, timestep, added_time_ids)
        context = encoder_hidden_states.repeat_interleave(frames, dim=0)
        x = self.conv_in(sample.flatten(0, 1))
        cond = self.controlnet_cond_embedding(controlnet_cond.to(x.dtype))
        pyramid = [cond, *self.flow_encoder(cond)]
        height = controlnet_flow.shape[-2]
        warped, masks = [], []
        for level, scale in zip(pyramid, self.scales):
            h, w = level.shape[-2:]
            flow = F.interpolate(controlnet_flow.flatten(0, 1).to(x.dtype), size=(h, w)) / (height / h)
            moved, mask = self.warp(level, flow.reshape(batch, frames - 1, 2, h, w), scale)
            warped.append(torch.cat([level[:, None], moved], 1).flatten(0, 1))
            masks.append(mask)
        marks = {}
        if landmarks is not None and hasattr(self, "controlnet_ldmk_embedding"):
            first = self.controlnet_ldmk_embedding(landmarks.flatten(0, 1).to(x.dtype))
            marks = {first.shape[-2] // k: F.interpolate(first, scale_factor=1 / k) if k > 1 else first
                     for k in (1, 2, 4)}

        def inject(x: torch.Tensor, index: int) -> torch.Tensor:
            x = x + warped[min(index, len(warped) - 1)]
            if x.shape[1] == self.config.block_out_channels[0] and x.shape[-2] in marks:
                x = x + marks[x.shape[-2]]
            return x

        indicator = torch.zeros(batch, frames, dtype=x.dtype, device=x.device)
        x = inject(x, 0)
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            kwargs = {"hidden_states": x, "temb": emb, "image_only_indicator": indicator}
            if getattr(block, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = context
            x, res = block(**kwargs)
            x = inject(x, i + 1)
            skips += list(res)
        x = x + warped[-1]
        x = self.mid_block(hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
        down = [conv(s) * conditioning_scale for s, conv in zip(skips, self.controlnet_down_blocks)]
        return down, self.controlnet_mid_block(x) * conditioning_scale, masks


class ControlNetUNet(UNetSpatioTemporalConditionModel):
    """SVD's UNet taking the adapter's residuals (the official UNetSpatioTemporalConditionControlNetModel)."""

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, down_block_additional_residuals: list[torch.Tensor] | None = None,
                mid_block_additional_residual: torch.Tensor | None = None, return_dict: bool = True):
        handles = []
        if down_block_additional_residuals is not None:
            rest = list(down_block_additional_residuals)
            for block in self.up_blocks:
                mine, rest = tuple(rest[-len(block.resnets):]), rest[:-len(block.resnets)]

                def add_skips(_module, args, kwargs, mine=mine):
                    skips = kwargs["res_hidden_states_tuple"]
                    kwargs["res_hidden_states_tuple"] = tuple(s + r.to(s.dtype)
                                                              for s, r in zip(skips, mine, strict=True))
                    return args, kwargs

                handles.append(block.register_forward_pre_hook(add_skips, with_kwargs=True))
        if mid_block_additional_residual is not None:
            mid = mid_block_additional_residual
            handles.append(self.mid_block.register_forward_hook(lambda _m, _a, out: out + mid.to(out.dtype)))
        try:
            return super().forward(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=return_dict)
        finally:
            for handle in handles:
                handle.remove()


class ImageEmbedder(ModelMixin, ConfigMixin):
    """(B, 3, H, W) image in [-1, 1] -> (B, 1, cross_attention_dim): a small conv encoder's pooled features."""

    @register_to_config
    def __init__(self, cross_attention_dim: int = 1024, width: int = 64, size: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(width, width, 4, stride=2, padding=1),
            nn.SiLU(), nn.Conv2d(width, width, 4, stride=2, padding=1), nn.SiLU())
        self.proj = nn.Linear(width, cross_attention_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        s = int(self.config.size)
        x = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False)
        return self.proj(self.features(x).mean((2, 3)))[:, None]


__all__ = ["ControlNetUNet", "FlowControlNet", "ForegroundMatting", "ImageEmbedder", "time_embedding"]

"""The video denoiser of the diffusion talking-head systems (Hallo, V-Express): SD1.5 spatial layers +
AnimateDiff temporal modules (diffusers' `UNetMotionModel`) + optional per-frame audio attention.

- `unet2d_config(preset)`: the spatial layout as a `UNet2DConditionModel` config ("sd15": the paper
  size; "tiny": two levels, 32/64 channels, 3-channel pixel latents, for tests and CPU). The reference
  UNet of a system is a `UNet2DConditionModel(**unet2d_config(...))`.
- `motion_config(unet_cfg, preset)`: the same layout as a `UNetMotionModel` config (temporal
  modules `down_blocks.i.motion_modules.j`, AnimateDiff's layout, 32 positions).
- `AudioUNetMotionModel`: UNetMotionModel + `audio_modules` (one `AudioAttention` per spatial
  attention of every cross-attention block, like Hallo's `down_blocks.i.audio_modules.j`): each frame's
  tokens attend to that frame's audio tokens; the output projection starts at zero (a fresh model is
  the base UNet) and is weighted by region masks when given (Hallo's lip / expression / pose split:
  one learned scale per region). They run between the spatial attention and the temporal module.
  `with audio_conditioning(unet, tokens, masks): unet(latents, t, encoder_hidden_states=...)`.

Calling convention: `unet(latents (B,C,F,h,w), t, encoder_hidden_states=(B*F, L, D)).sample`
(per-frame cross-attention context, e.g. face-embedding tokens repeated over frames).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
from diffusers import UNetMotionModel
from diffusers.models.attention_processor import Attention
from torch import nn

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "cross_attention_dim": 768,
    "attention_head_dim": 8, "norm_num_groups": 32,
}
TINY_UNET = {
    "sample_size": 8, "in_channels": 3, "out_channels": 3,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32, "attention_head_dim": 4,
    "norm_num_groups": 8,
}
PRESETS = {"sd15": SD15_UNET, "tiny": TINY_UNET}
_MOTION = {"sd15": {"motion_num_attention_heads": 8, "motion_max_seq_length": 32},
           "tiny": {"motion_num_attention_heads": 2, "motion_max_seq_length": 32}}


def unet2d_config(preset: str = "sd15", **overrides) -> dict:
    """A UNet2DConditionModel config ("sd15" | "tiny") with `overrides`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown UNet preset {preset!r}; choose from {sorted(PRESETS)}")
    return {**PRESETS[preset], **overrides}


def motion_config(unet_cfg: dict, preset: str = "sd15", **overrides) -> dict:
    """The UNetMotionModel config of the same spatial layout as `unet_cfg` (SD1.5's `attention_head_dim`
    is its head count, as diffusers' `UNetMotionModel.from_unet2d` reads it)."""
    def motion(name: str) -> str:
        return name.replace("2D", "Motion")

    cfg = {
        "sample_size": unet_cfg["sample_size"], "in_channels": unet_cfg["in_channels"],
        "out_channels": unet_cfg["out_channels"],
        "down_block_types": [motion(b) for b in unet_cfg["down_block_types"]],
        "up_block_types": [motion(b) for b in unet_cfg["up_block_types"]],
        "block_out_channels": list(unet_cfg["block_out_channels"]), "layers_per_block": unet_cfg["layers_per_block"],
        "cross_attention_dim": unet_cfg["cross_attention_dim"], "num_attention_heads": unet_cfg["attention_head_dim"],
        "norm_num_groups": unet_cfg.get("norm_num_groups", 32), "use_motion_mid_block": True, **_MOTION[preset],
    }
    return {**cfg, **overrides}


class AudioAttention(nn.Module):
    """Per-frame cross-attention of spatial tokens to audio tokens, added as a residual."""

    def __init__(self, channels: int, audio_dim: int, heads: int, norm_groups: int, regions: int = 0):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.attn = Attention(query_dim=channels, cross_attention_dim=audio_dim, heads=heads,
                              dim_head=channels // heads)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        # one learned scale per region mask (Hallo's lip / expression / pose weights)
        self.region_scale = nn.Parameter(torch.ones(regions)) if regions else None

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (N,C,h,w), tokens (N,L,D), masks (N,R,H,W) in [0,1] at any resolution, or None."""
        n, c, h, w = hidden.shape
        x = self.norm(hidden).permute(0, 2, 3, 1).reshape(n, h * w, c)
        x = self.proj_out(self.attn(self.proj_in(x), encoder_hidden_states=tokens.to(x.dtype)))
        x = x.reshape(n, h, w, c).permute(0, 3, 1, 2)
        if masks is not None and self.region_scale is not None:
            if masks.shape[1] != len(self.region_scale):
                raise ValueError(f"{masks.shape[1]} region masks for {len(self.region_scale)} region scales")
            weight = nn.functional.interpolate(masks.to(x.dtype), size=(h, w), mode="area")
            x = x * (weight * self.region_scale.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
        return hidden + x


class AudioUNetMotionModel(UNetMotionModel):
    """UNetMotionModel + `audio_modules` per cross-attention block (None: a plain UNetMotionModel).

    Config adds `audio_attention_dim` (the audio token width; None: no audio modules) and `audio_regions`
    (region masks weighting the audio attention; 0: unweighted)."""

    def __init__(self, audio_attention_dim: int | None = None, audio_regions: int = 0, **unet_kwargs):
        super().__init__(**unet_kwargs)
        self.register_to_config(audio_attention_dim=audio_attention_dim, audio_regions=audio_regions)
        self._audio: tuple[torch.Tensor, torch.Tensor | None] | None = None
        if not audio_attention_dim:
            return
        groups = unet_kwargs.get("norm_num_groups", 32)
        heads = unet_kwargs.get("motion_num_attention_heads", 8)
        for block in self._cross_attention_blocks():
            modules = []
            for i, motion_module in enumerate(block.motion_modules[:len(block.attentions)]):
                channels = block.attentions[i].proj_out.out_features if hasattr(block.attentions[i].proj_out,
                                                                                 "out_features") \
                    else block.attentions[i].proj_out.out_channels
                modules.append(AudioAttention(channels, audio_attention_dim, heads, groups, audio_regions))
                motion_module.register_forward_pre_hook(self._audio_hook(modules[-1]), with_kwargs=True)
            block.audio_modules = nn.ModuleList(modules)

    @staticmethod
    def _get_init_keys(input_class):
        # the config is UNetMotionModel's plus ours; diffusers reads the init keys off the signature
        return set(inspect.signature(UNetMotionModel.__init__).parameters) | {"audio_attention_dim", "audio_regions"}

    def _cross_attention_blocks(self) -> list[nn.Module]:
        blocks = [*self.down_blocks, self.mid_block, *self.up_blocks]
        return [b for b in blocks if getattr(b, "attentions", None) and getattr(b, "motion_modules", None)]

    def _audio_hook(self, module: AudioAttention):
        def hook(_motion_module, args, kwargs):
            if self._audio is None:
                return None
            tokens, masks = self._audio
            args = (module(args[0], tokens, masks), *args[1:])
            return args, kwargs

        return hook

    def audio_parameters(self) -> list[nn.Parameter]:
        return [p for b in self._cross_attention_blocks() for p in b.audio_modules.parameters()] \
            if self.config.audio_attention_dim else []

    def motion_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if ".motion_modules." in name]


@contextmanager
def audio_conditioning(unet: AudioUNetMotionModel, tokens: torch.Tensor, masks: torch.Tensor | None = None):
    """Within: every audio module of `unet` attends to `tokens` (B*F, L, D), weighted by `masks`
    (B*F, R, H, W) when the model has regions. Outside, the audio modules are skipped."""
    if not unet.config.audio_attention_dim:
        raise ValueError("this denoiser has no audio modules (audio_attention_dim is None)")
    unet._audio = (tokens, masks)
    try:
        yield unet
    finally:
        unet._audio = None


def build_denoiser(unet_cfg: dict, preset: str = "sd15", audio_attention_dim: int | None = None,
                   audio_regions: int = 0, **motion_overrides) -> AudioUNetMotionModel:
    """The video denoiser of the spatial layout `unet_cfg` (see the module docstring)."""
    return AudioUNetMotionModel(audio_attention_dim=audio_attention_dim, audio_regions=audio_regions,
                                **motion_config(unet_cfg, preset, **motion_overrides))


__all__ = ["AudioAttention", "AudioUNetMotionModel", "audio_conditioning", "build_denoiser", "motion_config",
           "unet2d_config"]

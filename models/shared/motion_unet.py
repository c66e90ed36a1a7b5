"""The video denoiser of the diffusion talking-head systems (Hallo, V-Express): SD1.5 spatial layers +
AnimateDiff temporal modules (diffusers' `UNetMotionModel`) + optional per-frame audio attention.

- `unet2d_config(preset)`: the spatial layout as a `UNet2DConditionModel` config ("sd15": the paper
  size; "tiny": two levels, 32/64 channels, 3-channel pixel latents, for tests and CPU). The reference
  UNet of a system is a `UNet2DConditionModel(**unet2d_config(...))`.
- `motion_config(unet_cfg, preset)`: the same layout as a `UNetMotionModel` config (temporal
  modules `down_blocks.i.motion_modules.j`, AnimateDiff's layout, 32 positions).
- `AudioUNetMotionModel`: UNetMotionModel + `audio_modules` (one per spatial attention of every
  cross-attention block, Hallo's `down_blocks.i.audio_modules.j`), run between the spatial attention and
  the temporal module: each frame's tokens attend to that frame's audio tokens, weighted by region masks
  when given. `audio_block` picks the kind: "simple" (`AudioAttention`: one cross-attention, one learned
  scale per region) or "hallo" (`RegionAudioModule`: the official Hallo audio module, keys and shapes as
  in the released net.pth). Their output starts at zero (a fresh model is the base UNet).
  `with audio_conditioning(unet, tokens, masks): unet(latents, t, encoder_hidden_states=...)`.
  `reference_attention="separate"` adds V-Express' `norm1_5` / `attn1_5` to every spatial transformer
  block (shared.reference_attention); "joined" (the default) adds nothing.

Calling convention: `unet(latents (B,C,F,h,w), t, encoder_hidden_states=(B*F, L, D)).sample`
(per-frame cross-attention context, e.g. face-embedding tokens repeated over frames).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
from diffusers import UNetMotionModel
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from .reference_attention import MODES as REFERENCE_MODES
from .reference_attention import add_separate_reference_modules

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


def _region_weights(masks: torch.Tensor | None, regions: int, h: int, w: int, dtype) -> torch.Tensor | None:
    """(N, R, H, W) masks -> (N, R, h, w) at the tokens' grid (area-averaged), checked against R."""
    if masks is None:
        return None
    if masks.shape[1] != regions:
        raise ValueError(f"{masks.shape[1]} region masks for {regions} regions")
    return nn.functional.interpolate(masks.to(dtype), size=(h, w), mode="area")


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
            weight = _region_weights(masks, len(self.region_scale), h, w, x.dtype)
            x = x * (weight * self.region_scale.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
        return hidden + x


class _RegionAudioBlock(nn.Module):
    """Hallo's AudioTemporalBasicTransformerBlock (every block enabled, as the released unet.yaml's
    stack_enable_blocks): self-attention, one cross-attention to the audio per region (`attn2_0/1/2`:
    full, face, lip) whose output is multiplied by that region's mask and passed through its zero conv
    (`zero_conv_full/face/lip`), the three added; then the feed-forward."""

    REGIONS = ("full", "face", "lip")

    def __init__(self, dim: int, audio_dim: int, heads: int):
        super().__init__()
        for region in self.REGIONS:
            conv = nn.Conv2d(dim, dim, kernel_size=1)
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
            setattr(self, f"zero_conv_{region}", conv)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=dim // heads)
        self.norm1 = nn.LayerNorm(dim)
        for i in range(len(self.REGIONS)):
            setattr(self, f"attn2_{i}", Attention(query_dim=dim, cross_attention_dim=audio_dim, heads=heads,
                                                  dim_head=dim // heads))
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor | None, h: int, w: int):
        """x (N, h*w, C), tokens (N, L, D), weights (N, 3, h, w) or None (every region everywhere)."""
        x = self.attn1(self.norm1(x)) + x
        normed, out = self.norm2(x), x
        for i, region in enumerate(self.REGIONS):
            a = getattr(self, f"attn2_{i}")(normed, encoder_hidden_states=tokens)
            a = a.reshape(len(a), h, w, -1).permute(0, 3, 1, 2)
            if weights is not None:
                a = a * weights[:, i:i + 1]
            out = out + getattr(self, f"zero_conv_{region}")(a).flatten(2).transpose(1, 2)
        return self.ff(self.norm3(out)) + out


class RegionAudioModule(nn.Module):
    """Hallo's audio module: the official Transformer3DModel(use_audio_module=True) of one frame, with its
    names (norm, proj_in, transformer_blocks.0, proj_out; 1x1 convolutions, SD1.5's
    use_linear_projection=False). `inner` is the official width of its attention, which is not always
    the block's (`in_channels // heads` heads of the block's input width, see AudioUNetMotionModel).
    proj_out starts at zero (the official starts it at random, the zero convs at zero) so that a fresh
    module adds nothing."""

    def __init__(self, channels: int, inner: int, audio_dim: int, heads: int, norm_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([_RegionAudioBlock(inner, audio_dim, heads)])
        self.proj_out = nn.Conv2d(inner, channels, kernel_size=1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (N,C,h,w), tokens (N,L,D), masks (N,3,H,W) in [0,1] (full, face, lip) at any resolution."""
        n, _, h, w = hidden.shape
        x = self.proj_in(self.norm(hidden))
        x = x.flatten(2).transpose(1, 2)
        weights = _region_weights(masks, len(_RegionAudioBlock.REGIONS), h, w, x.dtype)
        for block in self.transformer_blocks:
            x = block(x, tokens.to(x.dtype), weights, h, w)
        return hidden + self.proj_out(x.transpose(1, 2).reshape(n, -1, h, w))


AUDIO_BLOCKS = ("simple", "hallo")


class AudioUNetMotionModel(UNetMotionModel):
    """UNetMotionModel + `audio_modules` per cross-attention block (None: a plain UNetMotionModel).

    Config adds `audio_attention_dim` (the audio token width; None: no audio modules), `audio_regions`
    (region masks weighting the audio attention; 0: unweighted; the "hallo" block takes 3), `audio_block`
    ("simple" | "hallo") and `reference_attention` ("joined" | "separate")."""

    _EXTRA_CONFIG = ("audio_attention_dim", "audio_regions", "audio_block", "reference_attention")

    def __init__(self, audio_attention_dim: int | None = None, audio_regions: int = 0, audio_block: str = "simple",
                 reference_attention: str = "joined", **unet_kwargs):
        super().__init__(**unet_kwargs)
        if audio_block not in AUDIO_BLOCKS or reference_attention not in REFERENCE_MODES:
            raise ValueError(f"audio_block must be one of {AUDIO_BLOCKS} (got {audio_block!r}), reference_attention "
                             f"one of {REFERENCE_MODES} (got {reference_attention!r})")
        if audio_attention_dim and audio_block == "hallo" and audio_regions not in (0, 3):
            raise ValueError("the hallo audio block weights 3 regions (full, face, lip)")
        self.register_to_config(audio_attention_dim=audio_attention_dim, audio_regions=audio_regions,
                                audio_block=audio_block, reference_attention=reference_attention)
        self._audio: tuple[torch.Tensor, torch.Tensor | None] | None = None
        if reference_attention == "separate":
            add_separate_reference_modules(self)
        if not audio_attention_dim:
            return
        groups = unet_kwargs.get("norm_num_groups", 32)
        heads = unet_kwargs.get("motion_num_attention_heads", 8)
        for block, inners in self._official_audio_widths():
            modules = []
            for i, motion_module in enumerate(block.motion_modules[:len(block.attentions)]):
                proj_out = block.attentions[i].proj_out
                channels = getattr(proj_out, "out_features", None) or proj_out.out_channels
                if audio_block == "hallo":
                    n = block.attentions[i].transformer_blocks[0].attn1.heads  # the official attn_num_head_channels
                    modules.append(RegionAudioModule(channels, n * (inners[i] // n), audio_attention_dim, n, groups))
                else:
                    modules.append(AudioAttention(channels, audio_attention_dim, heads, groups, audio_regions))
                motion_module.register_forward_pre_hook(self._audio_hook(modules[-1]), with_kwargs=True)
            block.audio_modules = nn.ModuleList(modules)

    @staticmethod
    def _get_init_keys(input_class):
        # the config is UNetMotionModel's plus ours; diffusers reads the init keys off the signature
        return set(inspect.signature(UNetMotionModel.__init__).parameters) | set(AudioUNetMotionModel._EXTRA_CONFIG)

    def _official_audio_widths(self) -> list[tuple[nn.Module, list[int]]]:
        """(block, per-layer `in_channels` of Hallo's audio modules) for every cross-attention block: the
        official builds each with heads of `in_channels // heads` channels, where `in_channels` is, in a
        down block, the layer's input width, in the mid block the block's, in an up block the block's
        `in_channels` argument (the skip width of its last layer: reversed block_out_channels[i + 1])."""
        widths, rev = list(self.config.block_out_channels), list(reversed(self.config.block_out_channels))
        found = []
        for i, block in enumerate(self.down_blocks):
            first = widths[i - 1] if i else widths[0]
            found.append((block, [first] + [widths[i]] * (len(getattr(block, "attentions", [])) - 1)))
        found.append((self.mid_block, [widths[-1]] * len(getattr(self.mid_block, "attentions", []) or [])))
        for i, block in enumerate(self.up_blocks):
            found.append((block, [rev[min(i + 1, len(rev) - 1)]] * len(getattr(block, "attentions", []))))
        keep = set(map(id, self._cross_attention_blocks()))
        return [(block, inners) for block, inners in found if id(block) in keep]

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
                   audio_regions: int = 0, audio_block: str = "simple", reference_attention: str = "joined",
                   **motion_overrides) -> AudioUNetMotionModel:
    """The video denoiser of the spatial layout `unet_cfg` (see the module docstring)."""
    return AudioUNetMotionModel(audio_attention_dim=audio_attention_dim, audio_regions=audio_regions,
                                audio_block=audio_block, reference_attention=reference_attention,
                                **motion_config(unet_cfg, preset, **motion_overrides))


__all__ = ["AUDIO_BLOCKS", "AudioAttention", "AudioUNetMotionModel", "RegionAudioModule", "audio_conditioning",
           "build_denoiser", "motion_config", "unet2d_config"]

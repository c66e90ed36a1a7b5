"""BeautyREC (Yan et al., "BeautyREC: Robust, Efficient, and Component-Specific Makeup Transfer", CVPRW 2023).

One network, ``BeautyRECNet``: a source face (no makeup), a reference face (makeup) and both faces' parsing
labels -> the source wearing the reference's makeup. Images are (B, 3, S, S) in [-1, 1], labels (B, S, S)
integer ids of facefab's LABEL_NAMES.

- Content: a convolutional encoder of the source at 1/2, 1/4 and 1/4 (+ residual blocks) resolution.
- Component styles: one style encoder runs on the reference once per component (lips, skin, eyes: the
  reference masked to it); the three codes, stacked on the channels, modulate the source content at each
  scale (``StyleModulation``): per component a squeeze-excitation channel gate from the component's code,
  then a spatial gate, applied inside the source's mask of that component only.
- Global style: a second style encoder sees the whole reference; a cross-attention unit (queries: the
  reference code, keys and values: the source content, sine position encoding, as the official code orders
  them) adds the global look.
- Decoder: residual blocks over [global, component] features, then two upsampling steps each joined with the
  modulated content of that scale (U-Net style), a tanh output.

Module names and parameter shapes follow the official implementation (learningyan/BeautyREC,
network/REC/REC.py), so its released ``cleaner`` state dict loads by name (``convert.py`` unwraps the file).
Paper size: 256 px, 48 channels, 3 residual blocks (``BeautyRECNet()``); ``TINY_CONFIG`` is a 64 px,
16-channel model for tests and CPU smoke runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from facefab.face.parsing import LABELS

TINY_CONFIG = {"image_size": 64, "dim": 16, "style_dim": 16, "n_res": 1, "n_head": 4}
COMPONENTS = ("lips", "skin", "eyes")  # the channel order of component_masks, as the official seg maps
EYE_BAND_SHARE = 0.04  # eye-shadow band: the eye grown by this share of the image side, less the eye itself


def component_masks(labels: torch.Tensor, band_px: int | None = None) -> torch.Tensor:
    """(B, S, S) integer labels -> (B, 3, S, S) float {0, 1} masks of lips, skin and eyes (COMPONENTS).

    lips: upper_lip | lower_lip; skin: skin | nose; eyes: the eye-shadow band, i.e. each eye grown by
    `band_px` (default EYE_BAND_SHARE of S) minus the eyes, kept where the face is skin (brows and
    hair stay out), as the official data loader's box around each eye filled with the face mask.
    """
    labels = labels.long()
    lips = (labels == LABELS["upper_lip"]) | (labels == LABELS["lower_lip"])
    skin = (labels == LABELS["skin"]) | (labels == LABELS["nose"])
    eyes = ((labels == LABELS["left_eye"]) | (labels == LABELS["right_eye"])).float()
    band = max(1, round(EYE_BAND_SHARE * labels.shape[-1])) if band_px is None else int(band_px)
    grown = F.max_pool2d(eyes[:, None], 2 * band + 1, stride=1, padding=band)[:, 0]
    eye_band = (grown > 0) & (eyes == 0) & skin
    return torch.stack([lips, skin, eye_band], 1).float()


# -- building blocks (names as the official ones: their state-dict keys) ------------------------------

class LayerNorm(nn.Module):
    """Normalisation over all of a sample's (C, H, W), then a per-channel affine (gamma, beta)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.rand(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        x = (x - flat.mean(1).view(shape)) / (flat.std(1).view(shape) + self.eps)
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


_PADS = {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d, "zero": nn.ZeroPad2d}
_ACTIVATIONS = {"relu": lambda: nn.ReLU(), "lrelu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh,
                "none": lambda: None}


class Conv2dBlock(nn.Module):
    """pad -> conv -> norm ("in", "ln" or "none") -> activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int = 0, norm: str = "none",
                 activation: str = "relu", pad_type: str = "reflect"):
        super().__init__()
        self.pad = _PADS[pad_type](padding)
        self.conv = nn.Conv2d(cin, cout, kernel, stride)
        self.norm = {"in": lambda: nn.InstanceNorm2d(cout), "ln": lambda: LayerNorm(cout),
                     "none": lambda: None}[norm]()
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.pad(x))
        if self.norm is not None:
            x = self.norm(x)
        return x if self.activation is None else self.activation(x)


class ResBlock(nn.Module):
    def __init__(self, dim: int, norm: str, activation: str, pad_type: str):
        super().__init__()
        self.model = nn.Sequential(Conv2dBlock(dim, dim, 3, 1, 1, norm, activation, pad_type),
                                   Conv2dBlock(dim, dim, 3, 1, 1, norm, "none", pad_type))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.model(x)


class ResBlocks(nn.Module):
    def __init__(self, count: int, dim: int, norm: str, activation: str, pad_type: str):
        super().__init__()
        self.model = nn.Sequential(*(ResBlock(dim, norm, activation, pad_type) for _ in range(count)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class StyleEncoder(nn.Module):
    """Image -> style code (B, style_dim, S/4, S/4); no normalisation (it keeps the colours)."""

    def __init__(self, dim: int, style_dim: int, activation: str, pad_type: str):
        super().__init__()
        self.conv_first = Conv2dBlock(3, dim, 7, 1, 3, "none", activation, pad_type)
        self.down1 = Conv2dBlock(dim, dim, 4, 2, 1, "none", activation, pad_type)
        self.down2 = Conv2dBlock(dim, dim, 4, 2, 1, "none", activation, pad_type)
        self.style = nn.Conv2d(dim, style_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.style(self.down2(self.down1(self.conv_first(x))))


class ContentEncoder(nn.Module):
    """Image -> content features at S/2, S/4 and S/4 after the residual blocks (instance-normalised)."""

    def __init__(self, dim: int, n_res: int, activation: str, pad_type: str):
        super().__init__()
        self.conv_first = Conv2dBlock(3, dim, 7, 1, 3, "in", activation, pad_type)
        self.down1 = Conv2dBlock(dim, dim, 4, 2, 1, "in", activation, pad_type)
        self.down2 = Conv2dBlock(dim, dim, 4, 2, 1, "in", activation, pad_type)
        self.resblocks = ResBlocks(n_res, dim, "in", activation, pad_type)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        half = self.down1(self.conv_first(x))
        quarter = self.down2(half)
        return half, quarter, self.resblocks(quarter)


class SELayer(nn.Module):
    """Squeeze-excitation gate: a style code's pooled channels -> per-channel weights on the content."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        return content * self.fc(style.mean((2, 3)))[:, :, None, None]


class SpatialGate(nn.Module):
    """A style code's channel max and mean -> a per-pixel weight on the content."""

    def __init__(self):
        super().__init__()
        self.spatial = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([style.amax(1, keepdim=True), style.mean(1, keepdim=True)], 1)
        return content * torch.sigmoid(self.spatial(pooled))


class StyleModulation(nn.Module):
    """The component styles applied to one scale of the content, lips then skin then eyes, each only inside
    the source's mask of that component."""

    def __init__(self, dim: int):
        super().__init__()
        self.sen_lip, self.sa_lip = SELayer(dim), SpatialGate()
        self.sen_skin, self.sa_skin = SELayer(dim), SpatialGate()
        self.sen_eye, self.sa_eye = SELayer(dim), SpatialGate()

    def forward(self, style: torch.Tensor, content: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        size = content.shape[-2:]
        if style.shape[-2:] != size:
            style = F.interpolate(style, size=size, mode="nearest")
        if masks.shape[-2:] != size:
            masks = F.interpolate(masks, size=size, mode="nearest")
        styles = style.chunk(3, dim=1)
        gates = ((self.sen_lip, self.sa_lip), (self.sen_skin, self.sa_skin), (self.sen_eye, self.sa_eye))
        for i, ((channel_gate, spatial_gate), code) in enumerate(zip(gates, styles)):
            mask = masks[:, i:i + 1]
            styled = spatial_gate(code, channel_gate(code, content))
            content = content * (1 - mask) + styled * mask
        return content


def sine_positions(x: torch.Tensor, features: int, temperature: float = 10000.0) -> torch.Tensor:
    """(B, 2 * features, H, W) DETR-style sine encoding of normalised (y, x) positions (y first)."""
    b, _, h, w = x.shape
    eps, scale = 1e-6, 2 * math.pi
    ys = torch.arange(1, h + 1, device=x.device, dtype=torch.float32) / (h + eps) * scale
    xs = torch.arange(1, w + 1, device=x.device, dtype=torch.float32) / (w + eps) * scale
    freq = temperature ** (2 * (torch.arange(features, device=x.device) // 2).float() / features)

    def encode(pos: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, features): sin / cos interleaved pairs
        angles = pos[:, None] / freq
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], -1).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(h, w, features)
    pos_x = encode(xs)[None, :, :].expand(h, w, features)
    pos = torch.cat([pos_y, pos_x], -1).permute(2, 0, 1)
    return pos[None].expand(b, -1, -1, -1).to(x.dtype)


class OurMultiheadAttention(nn.Module):
    """Multi-head attention over feature maps with 1x1-conv projections."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.n_head, self.head_dim = n_head, dim // n_head
        inner = n_head * self.head_dim
        self.w_qs = nn.Conv2d(dim, inner, 1, bias=False)
        self.w_ks = nn.Conv2d(dim, inner, 1, bias=False)
        self.w_vs = nn.Conv2d(dim, inner, 1, bias=False)
        self.fc = nn.Conv2d(inner, dim, 1, bias=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, _, h, w = q.shape

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, n*d, H', W') -> (B, n, H'W', d)
            return x.view(b, self.n_head, self.head_dim, -1).transpose(-2, -1)

        q, k, v = heads(self.w_qs(q)), heads(self.w_ks(k)), heads(self.w_vs(v))
        # scaled by the number of key positions, not the head width: the official scaling, which its
        # released weights were trained with
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.shape[-2]), dim=-1)
        out = (attn @ v).transpose(-2, -1).reshape(b, -1, h, w)
        return self.fc(out)


class TransformerDecoderUnit(nn.Module):
    """Cross-attention (sine positions on queries and keys) + a 1x1-conv feed-forward, batch-normalised."""

    def __init__(self, dim: int, n_head: int = 8):
        super().__init__()
        self.attn = OurMultiheadAttention(dim, n_head)
        self.linear1 = nn.Conv2d(dim, dim, 1)
        self.linear2 = nn.Conv2d(dim, dim, 1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        features = q.shape[1] // 2
        out = self.attn(q + sine_positions(q, features), k + sine_positions(k, features), v)
        out = out + self.linear2(F.relu(self.linear1(out)))
        return self.norm(out)


# -- the network --------------------------------------------------------------------------------------

class BeautyRECNet(ModelMixin, ConfigMixin):
    """Source + reference + both parsing label maps -> the source with the reference's makeup."""

    @register_to_config
    def __init__(self, image_size: int = 256, dim: int = 48, style_dim: int = 48, n_res: int = 3, n_head: int = 8,
                 activ: str = "relu", pad_type: str = "reflect"):
        super().__init__()
        if style_dim != dim:
            raise ValueError(f"style_dim ({style_dim}) must equal dim ({dim}): the style gates are dim wide")
        if dim % n_head or dim % 2:
            raise ValueError(f"dim ({dim}) must be even and a multiple of n_head ({n_head})")
        if image_size % 4:
            raise ValueError(f"image_size ({image_size}) must be a multiple of 4")
        self.content_encoder = ContentEncoder(dim, n_res, activ, pad_type)
        self.style_encoder = StyleEncoder(dim, style_dim, activ, pad_type)
        self.style_encoder_global = StyleEncoder(dim, style_dim, activ, pad_type)
        self.modulate1, self.modulate2, self.modulate3 = (StyleModulation(dim) for _ in range(3))
        self.attention1 = TransformerDecoderUnit(dim, n_head)
        self.res = ResBlocks(n_res, dim * 2, "in", activ, pad_type)
        self.upconv1 = Conv2dBlock(dim * 3, dim, 3, 1, 1, "ln", activ, pad_type)
        self.upconv2 = Conv2dBlock(dim * 2, dim, 3, 1, 1, "ln", activ, pad_type)
        self.out = Conv2dBlock(dim, 3, 3, 1, 1, "none", "tanh", pad_type)

    def component_styles(self, reference: torch.Tensor, reference_masks: torch.Tensor) -> torch.Tensor:
        """(B, 3 * style_dim, S/4, S/4): the style code of the reference inside each component mask."""
        return torch.cat([self.style_encoder(reference * reference_masks[:, i:i + 1])
                          for i in range(reference_masks.shape[1])], 1)

    def transfer(self, source: torch.Tensor, reference: torch.Tensor, source_masks: torch.Tensor,
                 reference_masks: torch.Tensor) -> torch.Tensor:
        """forward() with (B, 3, S, S) component masks (component_masks) in place of label maps."""
        half, quarter, deep = self.content_encoder(source)
        styles = self.component_styles(reference, reference_masks)
        global_style = self.attention1(self.style_encoder_global(reference), deep, deep)
        features = self.res(torch.cat([global_style, self.modulate3(styles, deep, source_masks)], 1))
        features = torch.cat([self.modulate2(styles, quarter, source_masks), features], 1)
        features = self.upconv1(F.interpolate(features, scale_factor=2, mode="nearest"))
        features = torch.cat([self.modulate1(styles, half, source_masks), features], 1)
        features = self.upconv2(F.interpolate(features, scale_factor=2, mode="nearest"))
        return self.out(features)

    def forward(self, source: torch.Tensor, reference: torch.Tensor, source_labels: torch.Tensor,
                reference_labels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1]: `source` made up like `reference` (both (B, 3, S, S) in [-1, 1]; labels
        (B, S, S) ids of facefab.face.parsing.LABEL_NAMES)."""
        return self.transfer(source, reference, component_masks(source_labels), component_masks(reference_labels))


__all__ = ["COMPONENTS", "TINY_CONFIG", "BeautyRECNet", "component_masks"]

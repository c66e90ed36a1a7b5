"""MyTalk stage 2 (render): decode the lip region of a frame from landmarks and reference crops.

Geometry (shared by training and inference, so both see the same inputs):

- `LipBox`: one square per video around the lower face in the aligned crop, fixed for the whole video
  (no jitter): centred on the mean centre of the lip + lower-jaw points over the video, side
  `box_scale` x the crop side. The renderer works on this box resized to `image_size`.
- `lip_mask`: the area to re-draw, the union of the convex hulls of lips + lower jaw (iBUG jaw 4-12)
  of the frame's own landmarks and of the target landmarks, dilated; zero in a band along the box
  edge so the blend never reaches it.
- `rasterize_sketch`: the target landmarks drawn as 3 soft channels (jaw line, outer lip contour,
  filled inner mouth), a small numpy rasteriser (no gradients needed: it is an input).

Model input (channels concatenated): the box with the mask area blanked (3), the sketch (3), the
mask (1) and `num_refs` reference lip crops (the same box of other frames of the video, 3 each).
A UNet (residual blocks, skip connections) outputs RGB (tanh) and an alpha logit. The blend alpha is
1 on the mask and sigmoid(logit) in a feathered band around it, 0 elsewhere: pixels outside the band
are exactly the input frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

from .motion import INNER_LIPS, JAW, OUTER_LIPS

SKETCH_CHANNELS = 3
MASK_POINTS = np.r_[4:13, 17:37]  # K-subset indices: jaw 4-12 (mouth corners down to the chin) + all lips


# -- geometry ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LipBox:
    """A square in normalised crop coordinates (centre x, centre y, side; crop side = 1)."""

    cx: float
    cy: float
    side: float

    def affine(self, crop_size: int, image_size: int) -> np.ndarray:
        """(2,3) crop pixels -> box image pixels."""
        k = image_size / (self.side * crop_size)
        x0, y0 = (self.cx - self.side / 2) * crop_size, (self.cy - self.side / 2) * crop_size
        return np.array([[k, 0.0, -k * x0], [0.0, k, -k * y0]], np.float64)

    def to_box(self, points: np.ndarray) -> np.ndarray:
        """Normalised crop coordinates (..., 2) -> normalised box coordinates (0..1 inside the box)."""
        origin = np.array([self.cx - self.side / 2, self.cy - self.side / 2], np.float32)
        return (np.asarray(points, np.float32) - origin) / np.float32(self.side)


def lip_box(points: np.ndarray, box_scale: float) -> LipBox:
    """The video's box from its (T, K, 2) normalised motion points (frames with NaN are ignored)."""
    hull = np.asarray(points, np.float64)[:, MASK_POINTS]
    hull = hull[np.all(np.isfinite(hull), axis=(1, 2))]
    if not len(hull):
        raise ValueError("no frame with finite landmarks to place the lip box")
    centre = ((hull.min(axis=1) + hull.max(axis=1)) / 2).mean(axis=0)
    return LipBox(float(centre[0]), float(centre[1]), float(box_scale))


def warp_box(crop: np.ndarray, box: LipBox, image_size: int) -> np.ndarray:
    """The (image_size, image_size, 3) box image of an aligned crop."""
    import cv2

    return cv2.warpAffine(crop, box.affine(crop.shape[0], image_size), (image_size, image_size),
                         flags=cv2.INTER_AREA if box.side * crop.shape[0] > image_size else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)


def feather_px(feather: float, size: int) -> int:
    return max(1, round(feather * size))


def lip_mask(point_sets: list[np.ndarray], size: int, dilation: float, feather: float) -> np.ndarray:
    """(size, size) float32 {0,1}: union of the dilated lip+jaw hulls of each (K,2) box-normalised set."""
    import cv2

    mask = np.zeros((size, size), np.uint8)
    for points in point_sets:
        hull = cv2.convexHull(np.round(np.asarray(points)[MASK_POINTS] * size * 16).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=4)
    radius = round(dilation * size)
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.dilate(mask, kernel)
    margin = 2 * feather_px(feather, size) + 1  # keep the feathered blend inside the box
    mask[:margin], mask[-margin:], mask[:, :margin], mask[:, -margin:] = 0, 0, 0, 0
    return mask.astype(np.float32)


def _segment_heat(segments: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """exp(-d^2 / 2 sigma^2), d = pixel-centre distance to the nearest of (S,2,2) pixel segments."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    p = np.stack([xs.ravel(), ys.ravel()], axis=1)[:, None, :]  # (P,1,2)
    a, b = segments[None, :, 0], segments[None, :, 1]  # (1,S,2)
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-6), 0.0, 1.0)
    d2 = ((p - (a + t[..., None] * ab)) ** 2).sum(-1).min(axis=1)
    return np.exp(-d2 / (2 * sigma * sigma)).reshape(size, size)


def _polygon_inside(poly: np.ndarray, size: int) -> np.ndarray:
    """Even-odd rule fill of a closed pixel polygon (M,2), sampled at pixel centres."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    inside = np.zeros((size, size), bool)
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, 1, axis=0)):
        crosses = (ay > ys) != (by > ys)
        x_at = (bx - ax) * (ys - ay) / (by - ay if by != ay else 1e-6) + ax
        inside ^= crosses & (xs < x_at)
    return inside


def rasterize_sketch(points: np.ndarray, size: int) -> np.ndarray:
    """(3, size, size) float32 in [0,1] of (K,2) box-normalised points: jaw line, outer lips, inner mouth."""
    px = np.asarray(points, np.float32) * size
    sigma = max(0.6, size / 170.0)

    def chain(p, closed):
        q = np.concatenate([p, p[:1]]) if closed else p
        return np.stack([q[:-1], q[1:]], axis=1)

    inner = px[INNER_LIPS]
    return np.stack([
        _segment_heat(chain(px[JAW], False), size, sigma),
        _segment_heat(chain(px[OUTER_LIPS], True), size, sigma),
        np.maximum(_polygon_inside(inner, size), _segment_heat(chain(inner, True), size, sigma)),
    ]).astype(np.float32)


def frame_inputs(box_image: np.ndarray, target: np.ndarray, mask_sets: list[np.ndarray], ref_boxes: np.ndarray,
                 dilation: float, feather: float) -> dict[str, np.ndarray]:
    """Renderer inputs of one frame as channel-first uint8 arrays.

    box_image (H,H,3) uint8: the frame's lip box; target (K,2): the landmarks to draw, box-normalised;
    mask_sets: point sets (K,2) whose hulls form the re-drawn area (the frame's own + the target);
    ref_boxes (N,H,H,3) uint8: the same box of other frames. Returns masked (3,H,H), sketch (3,H,H),
    mask (1,H,H) (0/255) and refs (N,3,H,H).
    """
    size = box_image.shape[0]
    mask = lip_mask(mask_sets, size, dilation, feather)
    masked = (box_image * (1.0 - mask[..., None])).astype(np.uint8)
    sketch = np.clip(np.rint(rasterize_sketch(target, size) * 255), 0, 255).astype(np.uint8)
    return {"masked": masked.transpose(2, 0, 1), "sketch": sketch, "mask": (mask[None] * 255).astype(np.uint8),
            "refs": np.asarray(ref_boxes, np.uint8).transpose(0, 3, 1, 2)}


def to_model_inputs(batch: dict, device=None, dtype=None) -> dict[str, torch.Tensor]:
    """uint8 arrays/tensors of `frame_inputs` (batched) -> float tensors: images in [-1,1], masks in [0,1]."""
    out = {}
    for key, scale, shift in (("masked", 127.5, 1.0), ("refs", 127.5, 1.0), ("target", 127.5, 1.0),
                              ("sketch", 255.0, 0.0), ("mask", 255.0, 0.0)):
        if key in batch:
            x = torch.as_tensor(batch[key]).to(device=device, dtype=torch.float32) / scale - shift
            out[key] = x.to(dtype) if dtype is not None else x
    return out


# -- the model ---------------------------------------------------------------------------------------------

def _groups(channels: int) -> int:
    return math.gcd(channels, 32)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(nn.GroupNorm(_groups(cin), cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                   nn.GroupNorm(_groups(cout), cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.block(x)


class MyTalkRenderer(ModelMixin, ConfigMixin):
    """UNet: masked box + sketch + mask + reference lip crops -> (rgb in [-1,1], blend alpha in [0,1])."""

    @register_to_config
    def __init__(self, image_size: int = 256, num_refs: int = 3, base_channels: int = 64,
                 channel_mults: tuple[int, ...] = (1, 2, 4, 8), blocks_per_level: int = 2, box_scale: float = 0.5,
                 mask_dilation: float = 0.04, feather: float = 0.06):
        super().__init__()
        levels = len(channel_mults)
        if image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size {image_size} must be divisible by {2 ** (levels - 1)} ({levels} levels)")
        chans = [base_channels * m for m in channel_mults]
        self.conv_in = nn.Conv2d(3 + SKETCH_CHANNELS + 1 + 3 * num_refs, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        cin = chans[0]
        for i, ch in enumerate(chans):
            self.down.append(nn.ModuleList(ResBlock(cin if j == 0 else ch, ch) for j in range(blocks_per_level)))
            cin = ch
            if i < levels - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = nn.Sequential(ResBlock(cin, cin), ResBlock(cin, cin))
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(levels)):
            if i < levels - 1:
                self.upsample.append(nn.Conv2d(cin, cin, 3, padding=1))
            self.up.append(nn.ModuleList(ResBlock(cin + chans[i] if j == 0 else chans[i], chans[i])
                                         for j in range(blocks_per_level)))
            cin = chans[i]
        self.conv_out = nn.Sequential(nn.GroupNorm(_groups(cin), cin), nn.SiLU(), nn.Conv2d(cin, 4, 3, padding=1))

    def forward(self, masked: torch.Tensor, sketch: torch.Tensor, mask: torch.Tensor,
                refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """masked (B,3,H,W) and refs (B,N,3,H,W) in [-1,1]; sketch (B,3,H,W), mask (B,1,H,W) in [0,1]."""
        if refs.shape[1] != self.config.num_refs:
            raise ValueError(f"renderer was built for {self.config.num_refs} reference crops, got {refs.shape[1]}")
        h = self.conv_in(torch.cat([masked, sketch, mask, refs.flatten(1, 2)], dim=1))
        skips = []
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h)
        for j, blocks in enumerate(self.up):
            if j > 0:
                h = self.upsample[j - 1](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h)
        out = self.conv_out(h)
        rgb = torch.tanh(out[:, :3])
        region = blend_region(mask, feather_px(self.config.feather, mask.shape[-1]))
        alpha = torch.maximum(mask, torch.sigmoid(out[:, 3:4]) * region)
        return rgb, alpha


def blend_region(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Where alpha may be non-zero: the mask dilated by `feather` px, then blurred as much (soft edge)."""
    k = 2 * feather + 1
    grown = F.max_pool2d(mask, k, stride=1, padding=feather)
    return F.avg_pool2d(grown, k, stride=1, padding=feather, count_include_pad=False)


def composite(rgb: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    return alpha * rgb + (1 - alpha) * background


def render_loss(rgb: torch.Tensor, alpha: torch.Tensor, masked: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor, feather: int, gradient_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + image-gradient L1 of the composite against the target, over the blend region (no VGG)."""
    out = composite(rgb.float(), alpha.float(), masked.float())
    target = target.float()
    weight = (blend_region(mask.float(), feather) > 0).float()
    denom = weight.sum().clamp_min(1.0) * out.shape[1]
    l1 = ((out - target).abs() * weight).sum() / denom

    def grads(x):
        return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]

    (ox, oy), (tx, ty) = grads(out), grads(target)
    grad = (((ox - tx).abs() * weight[..., :, 1:]).sum() + ((oy - ty).abs() * weight[..., 1:, :]).sum()) / denom
    loss = l1 + gradient_weight * grad
    return loss, {"loss": float(loss.detach()), "l1": float(l1.detach()), "gradient": float(grad.detach())}


__all__ = [
    "MASK_POINTS",
    "SKETCH_CHANNELS",
    "LipBox",
    "MyTalkRenderer",
    "blend_region",
    "composite",
    "feather_px",
    "frame_inputs",
    "lip_box",
    "lip_mask",
    "rasterize_sketch",
    "render_loss",
    "to_model_inputs",
    "warp_box",
]

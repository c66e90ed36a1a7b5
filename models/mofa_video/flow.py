"""MOFA-Video's motion side: sparse hints from point motion, the sparse-to-dense network (CMP) that turns
them into dense flow, and the forward splatting that moves the reference's features along it.

- `sparse_hints(start, targets, size)`: the official utils.get_sparse_flow / sample_optical_flow: for every
  frame, the displacement of each point since the reference written at the point's reference pixel (row y,
  column x) of a (2, S, S) map, and a (2, S, S) 0/1 mask of where a hint is.
- `SparseToDense`: CMP (Zhan et al., "Self-supervised learning via conditional motion propagation"; MOFA's
  models/cmp, experiments/semiauto_annot/resnet50_vip+mpii_liteflow): an image encoder and a sparse-motion
  encoder, both 8x down, concatenated into a multi-scale decoder that classifies each axis' flow into
  `nbins` bins over [-fmax, fmax]; the flow is the softmax expectation of the bins (the official
  `Fuser.convert_flow` takes the same bin centres), upsampled to the input size. `flow_encoder` is the
  official ShallowNet (`features.0/1/4/5`, the same names and shapes); the image encoder is a small conv
  stack instead of the official ResNet-50 and the decoder a three-scale one like MotionDecoderSkipLayer's
  decoder1/2/4 without its skip layers (see convert.py for what of a released CMP maps).
- `softsplat_average(x, flow)`: the official softsplat(strMode='avg') in plain torch: every source pixel
  splatted bilinearly to where its flow lands, the splats averaged (differentiable in x and flow).
- `keypoint_images(points, size, radius)`: the keypoint images of the ldmk embedding (dots on black).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


def softsplat_average(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) features forward-warped by (B, 2, H, W) flow in pixels (x, y): bilinear splatting,
    each target pixel the weighted average of what lands on it (0 where nothing does)."""
    b, c, h, w = x.shape
    dtype = x.dtype
    x, flow = x.float(), flow.float()
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                            torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    tx, ty = gx + flow[:, 0], gy + flow[:, 1]
    x0, y0 = tx.floor(), ty.floor()
    source = torch.cat([x, torch.ones_like(x[:, :1])], 1).flatten(2)  # (B, C+1, HW)
    out = torch.zeros_like(source)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - (tx - xi).abs()) * (1 - (ty - yi).abs())
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            weight = (weight * inside).flatten(1)
            index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long().flatten(1)
            out.scatter_add_(2, index[:, None].expand(-1, c + 1, -1), source * weight[:, None])
    out = out[:, :c] / (out[:, c:] + 1e-7)
    return out.reshape(b, c, h, w).to(dtype)


def sparse_hints(start: np.ndarray, targets: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """start (K, 2) points on the reference, targets (T, K, 2) where they go (NaN: unseen), in pixels of a
    `size` square -> (sparse (T, 2, S, S) float32 displacement (dx, dy) at each start pixel, mask
    (T, 2, S, S) float32 1 there). A point off the image or unseen gives no hint."""
    start = np.asarray(start, np.float32)
    targets = np.asarray(targets, np.float32)
    t = len(targets)
    sparse = np.zeros((t, 2, size, size), np.float32)
    mask = np.zeros((t, 2, size, size), np.float32)
    col, row = np.round(start[:, 0]), np.round(start[:, 1])
    on = np.isfinite(start).all(1) & (col >= 0) & (col < size) & (row >= 0) & (row < size)
    for i in range(t):
        ok = on & np.isfinite(targets[i]).all(1)
        r, c = row[ok].astype(int), col[ok].astype(int)
        moved = targets[i][ok] - start[ok]
        sparse[i, 0, r, c], sparse[i, 1, r, c] = moved[:, 0], moved[:, 1]
        mask[i, :, r, c] = 1.0
    return sparse, mask


def keypoint_images(points: np.ndarray, size: int, radius: int = 2) -> np.ndarray:
    """(T, K, 2) points in pixels -> (T, S, S, 3) uint8 white dots on black (NaN points skipped)."""
    out = np.zeros((len(points), size, size, 3), np.uint8)
    for image, frame in zip(out, np.asarray(points, np.float32)):
        for x, y in frame[np.isfinite(frame).all(1)]:
            cv2.circle(image, (round(float(x)), round(float(y))), int(radius), (255, 255, 255), -1)
    return out


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ShallowNet(nn.Module):
    """The official sparse-motion encoder (shallownet8x): (B, 4, H, W) sparse flow + mask -> 8x down."""

    def __init__(self, input_dim: int = 4, output_dim: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_dim, 16, kernel_size=5, stride=2, padding=2), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2), nn.Conv2d(16, output_dim, kernel_size=3, padding=1), nn.BatchNorm2d(output_dim),
            nn.ReLU(inplace=True), nn.AvgPool2d(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ImageEncoder8x(nn.Module):
    """A small conv image encoder, 8x down (the official CMP uses a ResNet-50 here)."""

    def __init__(self, channels: tuple[int, ...], output_dim: int):
        super().__init__()
        layers, c_in = [], 3
        for i, c_out in enumerate(channels):
            layers += _conv_bn(c_in, c_out, stride=2 if i < 3 else 1)
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.out = nn.Conv2d(c_in, output_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class MotionDecoder(nn.Module):
    """decoder1/2/4 (the official MotionDecoderSkipLayer's three scales, combo [1, 2, 4]), their
    upsampled outputs fused into the per-axis bin logits."""

    def __init__(self, input_dim: int, output_dim: int, width: int):
        super().__init__()
        self.decoder1 = nn.Sequential(*_conv_bn(input_dim, width), *_conv_bn(width, width))
        self.decoder2 = nn.Sequential(nn.MaxPool2d(2, 2), *_conv_bn(input_dim, width), *_conv_bn(width, width))
        self.decoder4 = nn.Sequential(nn.MaxPool2d(4, 4), *_conv_bn(input_dim, width), *_conv_bn(width, width))
        self.head = nn.Conv2d(3 * width, output_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        parts = [self.decoder1(x)] + [F.interpolate(d(x), size=size, mode="bilinear", align_corners=False)
                                      for d in (self.decoder2, self.decoder4)]
        return self.head(torch.cat(parts, 1))


class SparseToDense(ModelMixin, ConfigMixin):
    """CMP: (image (B, 3, H, W) in [-1, 1], sparse (B, 2, H, W) pixels, mask (B, 2, H, W)) -> dense flow
    (B, 2, H, W) in pixels. H and W multiples of 32 (the decoder's 4x pooling of the 8x grid)."""

    @register_to_config
    def __init__(self, img_enc_dim: int = 256, sparse_enc_dim: int = 16,
                 image_channels: tuple[int, ...] = (64, 128, 256),
                 nbins: int = 99, fmax: float = 50.0, decoder_width: int = 128, size: int = 384):
        super().__init__()
        self.image_encoder = ImageEncoder8x(tuple(image_channels), img_enc_dim)
        self.flow_encoder = ShallowNet(4, sparse_enc_dim)
        self.flow_decoder = MotionDecoder(img_enc_dim + sparse_enc_dim, 2 * nbins, decoder_width)
        self.register_buffer("bins", torch.linspace(-fmax, fmax, nbins), persistent=False)

    def forward(self, image: torch.Tensor, sparse: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        features = torch.cat([self.image_encoder(image), self.flow_encoder(torch.cat([sparse, mask], 1))], 1)
        logits = self.flow_decoder(features)
        n = self.config.nbins
        flow = torch.stack([(logits[:, i * n:(i + 1) * n].softmax(1) * self.bins.view(1, -1, 1, 1).to(logits))
                           .sum(1) for i in (0, 1)], 1)
        return F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=True)

    def dense(self, image: torch.Tensor, sparse: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The same at any size: image, hints resized to the network's `size` (the hints' values scaled),
        the flow back to the input's size and scale."""
        h = image.shape[-1]
        s = int(self.config.size)
        if h == s:
            return self(image, sparse, mask)
        k = s / h
        image_s = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False)
        # hints are points: nearest keeps each one a one-pixel hint (max-pool would merge; nearest may drop
        # some when shrinking, as the official's 384 resampling does)
        sparse_s = F.interpolate(sparse, size=(s, s), mode="nearest") * k
        mask_s = F.interpolate(mask, size=(s, s), mode="nearest")
        flow = self(image_s, sparse_s, mask_s)
        return F.interpolate(flow, size=(h, h), mode="bilinear", align_corners=True) / k


__all__ = ["ShallowNet", "SparseToDense", "keypoint_images", "softsplat_average", "sparse_hints"]

"""face-vid2vid (Wang et al., "One-Shot Free-View Neural Talking-Head Synthesis", CVPR 2021).

Five networks, each a diffusers ``ModelMixin`` + ``ConfigMixin`` with its own config, composed by
``FaceVid2VidModel`` (the one object trained, exported with ``save_pretrained`` and loaded with
``FaceVid2VidModel.from_pretrained``):

* ``AppearanceFeatureExtractor`` F: source image -> 3D appearance feature volume f_s (C x D x H x W).
* ``CanonicalKeypointDetector`` L: image -> K canonical 3D keypoints x_c (soft-argmax of 3D heatmaps).
* ``HeadPoseExpressionEstimator`` H: image -> yaw/pitch/roll (binned, degrees), translation t and
  expression deformations delta (K x 3). Keypoints of an image: x = R(yaw, pitch, roll) x_c + t + delta.
* ``MotionFieldEstimator`` M: per-keypoint first-order warps of f_s (Jacobian R_s R_d^-1, as the
  paper derives it from the head rotations), combined by predicted soft masks into one 3D flow
  field, plus a 2D occlusion mask.
* ``Generator`` G: warps f_s with the flow, projects 3D -> 2D, masks occlusions, decodes the image.

Images are float (B, 3, H, W) in [0, 1]. Coordinates are normalised to [-1, 1] in (x, y, z) order,
the order ``torch.nn.functional.grid_sample`` reads. Normalisation is GroupNorm everywhere (no
BatchNorm buffers), so data-parallel replicas stay identical without buffer syncs.

``FaceVid2VidModel()`` builds the paper-size networks (256 px); ``FaceVid2VidModel.tiny()`` a
64 px model for tests and CPU smoke runs (``TINY_CONFIG``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

# -- building blocks ---------------------------------------------------------------------------


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class _ResBlock(nn.Module):
    def __init__(self, channels: int, dims: int):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.norm1, self.conv1 = _norm(channels), conv(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = _norm(channels), conv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return x + out


class _Down(nn.Module):
    """conv3 + norm + relu, then halve H and W (depth kept in 3D, as the paper does)."""

    def __init__(self, cin: int, cout: int, dims: int):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.conv, self.norm = conv(cin, cout, 3, padding=1), _norm(cout)
        self.pool = nn.AvgPool3d((1, 2, 2)) if dims == 3 else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class _Up(nn.Module):
    """Double H and W, then conv3 + norm + relu."""

    def __init__(self, cin: int, cout: int, dims: int):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.scale = (1, 2, 2) if dims == 3 else (2, 2)
        self.conv, self.norm = conv(cin, cout, 3, padding=1), _norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class _Hourglass(nn.Module):
    """U-Net style encoder/decoder with skip connections (2D or 3D, H/W halved per block)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], dims: int):
        super().__init__()
        enc = [in_channels, *channels]
        self.downs = nn.ModuleList(_Down(enc[i], enc[i + 1], dims) for i in range(len(channels)))
        ups, cur = [], channels[-1]
        for i in reversed(range(len(channels))):
            out = channels[i - 1] if i > 0 else channels[0]
            ups.append(_Up(cur, out, dims))
            cur = out + enc[i]
        self.ups = nn.ModuleList(ups)
        self.out_channels = cur

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for down in self.downs:
            skips.append(down(skips[-1]))
        out = skips.pop()
        for up in self.ups:
            out = torch.cat([up(out), skips.pop()], dim=1)
        return out


def coordinate_grid(depth: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """(D, H, W, 3) grid of normalised (x, y, z) coordinates in [-1, 1]."""
    z = torch.linspace(-1, 1, depth, device=device, dtype=dtype)
    y = torch.linspace(-1, 1, height, device=device, dtype=dtype)
    x = torch.linspace(-1, 1, width, device=device, dtype=dtype)
    zz, yy, xx = torch.meshgrid(z, y, x, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


def rotation_matrix(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotation from angles in degrees: R = R_pitch(x) @ R_yaw(y) @ R_roll(z)."""
    y, p, r = (torch.deg2rad(a) for a in (yaw, pitch, roll))
    one, zero = torch.ones_like(y), torch.zeros_like(y)

    def mat(rows):
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    rp = mat([[one, zero, zero], [zero, p.cos(), -p.sin()], [zero, p.sin(), p.cos()]])
    ry = mat([[y.cos(), zero, y.sin()], [zero, one, zero], [-y.sin(), zero, y.cos()]])
    rr = mat([[r.cos(), -r.sin(), zero], [r.sin(), r.cos(), zero], [zero, zero, one]])
    return rp @ ry @ rr


def head_motion(pose: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An estimator's output as a head motion: rotation (B, 3, 3), translation (B, 3), expression (B, K, 3)."""
    return {"rotation": rotation_matrix(pose["yaw"], pose["pitch"], pose["roll"]),
            "translation": pose["translation"], "expression": pose["expression"]}


def relative_motion(source: dict[str, torch.Tensor], driving: dict[str, torch.Tensor],
                    initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The head motion of `driving` relative to `initial` (the first driving frame) applied on top of
    `source`'s own (estimator outputs; a batch of 1 broadcasts): R = R_d R_d0^-1 R_s,
    t = t_s + (t_d - t_d0), delta = delta_s + (delta_d - delta_d0)."""
    s, d, d0 = head_motion(source), head_motion(driving), head_motion(initial)
    return {"rotation": d["rotation"] @ d0["rotation"].transpose(-1, -2) @ s["rotation"],
            "translation": s["translation"] + (d["translation"] - d0["translation"]),
            "expression": s["expression"] + (d["expression"] - d0["expression"])}


def place_keypoints(canonical: torch.Tensor, motion: dict[str, torch.Tensor]) -> torch.Tensor:
    """x = R x_c + t + delta for canonical keypoints (B, K, 3) and a head motion (see head_motion)."""
    kp = torch.einsum("bij,bkj->bki", motion["rotation"], canonical)
    return kp + motion["translation"][:, None, :] + motion["expression"]


def transform_keypoints(canonical: torch.Tensor, pose: dict[str, torch.Tensor]) -> torch.Tensor:
    """x = R x_c + t + delta for canonical keypoints (B, K, 3) and an estimator's output."""
    return place_keypoints(canonical, head_motion(pose))


def keypoint_heatmap(kp: torch.Tensor, grid: torch.Tensor, variance: float) -> torch.Tensor:
    """(B, K, D, H, W) Gaussians at keypoints (B, K, 3) on a (D, H, W, 3) grid."""
    diff = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / variance)


# -- the five networks -----------------------------------------------------------------------------


class AppearanceFeatureExtractor(ModelMixin, ConfigMixin):
    """Image -> 3D appearance features (B, C, D, H/2^n, W/2^n), n = len(block_channels) - 1."""

    @register_to_config
    def __init__(self, image_channels: int = 3, block_channels: tuple[int, ...] = (64, 128, 256),
                 feature_channels: int = 32, feature_depth: int = 16, num_resblocks: int = 6):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(image_channels, block_channels[0], 7, padding=3),
                                  _norm(block_channels[0]), nn.ReLU())
        self.downs = nn.Sequential(*[_Down(block_channels[i], block_channels[i + 1], 2)
                                     for i in range(len(block_channels) - 1)])
        self.project = nn.Conv2d(block_channels[-1], feature_channels * feature_depth, 1)
        self.blocks = nn.Sequential(*[_ResBlock(feature_channels, 3) for _ in range(num_resblocks)])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.project(self.downs(self.stem(image)))
        b, _, h, w = x.shape
        x = x.reshape(b, self.config.feature_channels, self.config.feature_depth, h, w)
        return self.blocks(x)


class CanonicalKeypointDetector(ModelMixin, ConfigMixin):
    """Image -> K canonical 3D keypoints (B, K, 3) in [-1, 1], soft-argmax over 3D heatmaps."""

    @register_to_config
    def __init__(self, image_channels: int = 3, num_kp: int = 20, depth: int = 16,
                 block_channels: tuple[int, ...] = (32, 64, 128, 256, 512), scale: float = 0.25,
                 temperature: float = 0.1):
        super().__init__()
        self.hourglass = _Hourglass(image_channels, tuple(block_channels), 2)
        self.head = nn.Conv2d(self.hourglass.out_channels, num_kp * depth, 7, padding=3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.scale != 1:
            image = F.interpolate(image, scale_factor=cfg.scale, mode="bilinear", align_corners=False,
                                  antialias=True)
        logits = self.head(self.hourglass(image))
        b, _, h, w = logits.shape
        logits = logits.reshape(b, cfg.num_kp, -1) / cfg.temperature
        heat = F.softmax(logits, dim=-1).reshape(b, cfg.num_kp, cfg.depth, h, w, 1)
        grid = coordinate_grid(cfg.depth, h, w, device=logits.device, dtype=logits.dtype)
        return (heat * grid).sum(dim=(2, 3, 4))


class HeadPoseExpressionEstimator(ModelMixin, ConfigMixin):
    """Image -> yaw, pitch, roll (degrees, expectation over bins as HopeNet), t (3), delta (K, 3)."""

    @register_to_config
    def __init__(self, image_channels: int = 3, block_channels: tuple[int, ...] = (64, 128, 256, 512),
                 num_bins: int = 66, num_kp: int = 20):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(image_channels, block_channels[0], 7, stride=2, padding=3),
                                   _norm(block_channels[0]), nn.ReLU()]
        for i in range(len(block_channels) - 1):
            layers += [_Down(block_channels[i], block_channels[i + 1], 2), _ResBlock(block_channels[i + 1], 2)]
        self.encoder = nn.Sequential(*layers)
        c = block_channels[-1]
        self.angles = nn.Linear(c, 3 * num_bins)
        self.translation = nn.Linear(c, 3)
        self.expression = nn.Linear(c, 3 * num_kp)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        h = self.encoder(image).mean(dim=(2, 3))
        bins = self.angles(h).reshape(-1, 3, cfg.num_bins)
        idx = torch.arange(cfg.num_bins, device=h.device, dtype=h.dtype)
        # HopeNet's binning: 3 degree bins centred on [-99, 99)
        degrees = (F.softmax(bins, dim=-1) * idx).sum(-1) * 3 - 99
        return {"yaw": degrees[:, 0], "pitch": degrees[:, 1], "roll": degrees[:, 2],
                "translation": self.translation(h),
                "expression": self.expression(h).reshape(-1, cfg.num_kp, 3)}


class MotionFieldEstimator(ModelMixin, ConfigMixin):
    """Keypoints + source features -> 3D flow (B, D, H, W, 3) and occlusion mask (B, 1, H, W)."""

    @register_to_config
    def __init__(self, feature_channels: int = 32, feature_depth: int = 16, num_kp: int = 20,
                 block_channels: tuple[int, ...] = (32, 64, 128, 256, 512), compress: int = 4,
                 kp_variance: float = 0.01):
        super().__init__()
        self.compressor = nn.Conv3d(feature_channels, compress, 1)
        self.hourglass = _Hourglass((num_kp + 1) * (compress + 1), tuple(block_channels), 3)
        self.mask = nn.Conv3d(self.hourglass.out_channels, num_kp + 1, 7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_channels * feature_depth, 1, 7, padding=3)

    def forward(self, features: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor,
                jacobian: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        b, _, d, h, w = features.shape
        k = cfg.num_kp
        grid = coordinate_grid(d, h, w, device=features.device, dtype=features.dtype)
        # sparse motions: identity for the background, first-order warp per keypoint
        rel = grid[None, None] - kp_driving[:, :, None, None, None, :]              # (B,K,D,H,W,3)
        warped = torch.einsum("bij,bkdhwj->bkdhwi", jacobian, rel) + kp_source[:, :, None, None, None, :]
        motions = torch.cat([grid[None, None].expand(b, 1, d, h, w, 3), warped], dim=1)  # (B,K+1,...)
        compressed = self.compressor(features)
        c = compressed.shape[1]
        repeated = compressed[:, None].expand(b, k + 1, c, d, h, w).reshape(b * (k + 1), c, d, h, w)
        deformed = F.grid_sample(repeated, motions.reshape(b * (k + 1), d, h, w, 3),
                                 align_corners=True, padding_mode="border").reshape(b, k + 1, c, d, h, w)
        heat = (keypoint_heatmap(kp_driving, grid, cfg.kp_variance)
                - keypoint_heatmap(kp_source, grid, cfg.kp_variance))
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1)[:, :, None]  # (B,K+1,1,D,H,W)
        x = torch.cat([heat, deformed], dim=2).reshape(b, -1, d, h, w)
        out = self.hourglass(x)
        mask = F.softmax(self.mask(out), dim=1)                                      # (B,K+1,D,H,W)
        flow = (mask[..., None] * motions).sum(dim=1)                                # (B,D,H,W,3)
        occlusion = torch.sigmoid(self.occlusion(out.reshape(b, -1, h, w)))
        return {"flow": flow, "occlusion": occlusion, "mask": mask}


class Generator(ModelMixin, ConfigMixin):
    """Warped 3D features -> image. Upsamples len(up_channels) times (x2 each)."""

    @register_to_config
    def __init__(self, feature_channels: int = 32, feature_depth: int = 16, hidden_channels: int = 256,
                 num_resblocks: int = 6, up_channels: tuple[int, ...] = (128, 64), image_channels: int = 3):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(feature_channels * feature_depth, hidden_channels, 3, padding=1),
                                     _norm(hidden_channels), nn.ReLU())
        self.blocks = nn.Sequential(*[_ResBlock(hidden_channels, 2) for _ in range(num_resblocks)])
        chans = [hidden_channels, *up_channels]
        self.ups = nn.Sequential(*[_Up(chans[i], chans[i + 1], 2) for i in range(len(up_channels))])
        self.out = nn.Conv2d(chans[-1], image_channels, 7, padding=3)

    def forward(self, features: torch.Tensor, flow: torch.Tensor, occlusion: torch.Tensor) -> torch.Tensor:
        warped = F.grid_sample(features, flow, align_corners=True, padding_mode="border")
        b, c, d, h, w = warped.shape
        x = self.project(warped.reshape(b, c * d, h, w)) * occlusion
        x = self.ups(self.blocks(x))
        return torch.sigmoid(self.out(x))


# -- the composed model -----------------------------------------------------------------------------

TINY_CONFIG: dict[str, Any] = {
    "image_size": 64,
    "num_kp": 6,
    "feature_channels": 4,
    "feature_depth": 8,
    "appearance_block_channels": [16, 32, 32],
    "appearance_resblocks": 1,
    "keypoint_block_channels": [16, 32, 32],
    "keypoint_scale": 0.5,
    "pose_block_channels": [16, 32, 64],
    "motion_block_channels": [16, 32],
    "motion_compress": 2,
    "generator_hidden_channels": 32,
    "generator_resblocks": 1,
    "generator_up_channels": [32, 16],
}


class FaceVid2VidModel(ModelMixin, ConfigMixin):
    """All five face-vid2vid networks; the unit that is trained, exported and loaded.

    ``forward(source, driving)`` reenacts: the identity and canonical keypoints of ``source``,
    the head pose and expression of ``driving``. For animating many driving frames from one
    source, call ``encode_source`` once and ``reenact`` per frame batch (or ``render`` with a head
    motion of your own, e.g. ``relative_motion``: facefab.models.facevid2vid.pipeline).
    """

    @register_to_config
    def __init__(self, image_size: int = 256, image_channels: int = 3, num_kp: int = 20,
                 feature_channels: int = 32, feature_depth: int = 16,
                 appearance_block_channels: tuple[int, ...] = (64, 128, 256), appearance_resblocks: int = 6,
                 keypoint_block_channels: tuple[int, ...] = (32, 64, 128, 256, 512), keypoint_scale: float = 0.25,
                 keypoint_temperature: float = 0.1,
                 pose_block_channels: tuple[int, ...] = (64, 128, 256, 512), pose_bins: int = 66,
                 motion_block_channels: tuple[int, ...] = (32, 64, 128, 256, 512), motion_compress: int = 4,
                 kp_variance: float = 0.01,
                 generator_hidden_channels: int = 256, generator_resblocks: int = 6,
                 generator_up_channels: tuple[int, ...] = (128, 64)):
        super().__init__()
        downs = len(appearance_block_channels) - 1
        if len(generator_up_channels) != downs:
            raise ValueError(f"generator_up_channels needs {downs} entries (one per appearance downsampling), "
                             f"got {len(generator_up_channels)}")
        if image_size % (2 ** downs):
            raise ValueError(f"image_size {image_size} must be divisible by {2 ** downs}")
        self.appearance = AppearanceFeatureExtractor(image_channels, tuple(appearance_block_channels),
                                                     feature_channels, feature_depth, appearance_resblocks)
        self.keypoints = CanonicalKeypointDetector(image_channels, num_kp, feature_depth,
                                                   tuple(keypoint_block_channels), keypoint_scale,
                                                   keypoint_temperature)
        self.pose = HeadPoseExpressionEstimator(image_channels, tuple(pose_block_channels), pose_bins, num_kp)
        self.motion = MotionFieldEstimator(feature_channels, feature_depth, num_kp, tuple(motion_block_channels),
                                           motion_compress, kp_variance)
        self.generator = Generator(feature_channels, feature_depth, generator_hidden_channels,
                                   generator_resblocks, tuple(generator_up_channels), image_channels)

    @classmethod
    def tiny(cls, **overrides: Any) -> FaceVid2VidModel:
        return cls(**{**TINY_CONFIG, **overrides})

    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if image.shape[-2:] != (size, size):
            image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return image.to(self.dtype)

    def encode_source(self, source: torch.Tensor) -> dict[str, Any]:
        source = self._prepare(source)
        canonical = self.keypoints(source)
        pose = self.pose(source)
        return {"features": self.appearance(source), "canonical": canonical, "pose": pose,
                "kp": transform_keypoints(canonical, pose)}

    def estimate_pose(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head pose and expression of images (any size; resized to image_size)."""
        return self.pose(self._prepare(image))

    def render(self, state: dict[str, Any], motion: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The source of `state` (encode_source) moved to a head motion (head_motion / relative_motion)
        of batch B; a state of one source is shared by all B."""
        b = motion["rotation"].shape[0]
        features = state["features"].expand(b, -1, -1, -1, -1)
        kp_driving = place_keypoints(state["canonical"].expand(b, -1, -1), motion)
        rs = rotation_matrix(state["pose"]["yaw"], state["pose"]["pitch"], state["pose"]["roll"])
        out = self.motion(features, state["kp"].expand(b, -1, -1), kp_driving, rs @ motion["rotation"].transpose(1, 2))
        image = self.generator(features, out["flow"], out["occlusion"])
        return {"prediction": image, "kp_driving": kp_driving, **out}

    def reenact(self, state: dict[str, Any], driving: torch.Tensor) -> dict[str, Any]:
        """The source with the absolute head pose and expression of `driving`."""
        pose = self.estimate_pose(driving)
        return {**self.render(state, head_motion(pose)), "pose_driving": pose}

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> dict[str, Any]:
        state = self.encode_source(source)
        out = self.reenact(state, driving)
        return {**out, "kp_source": state["kp"], "kp_canonical": state["canonical"], "pose_source": state["pose"]}

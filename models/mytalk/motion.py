"""MyTalk stage 1 (motion): audio + identity landmarks -> per-frame lip/jaw landmark motion.

Landmarks are (x, y) in the aligned face crop, normalised by the crop side (0..1). Two sets:

- identity input: all iBUG-68 points (`landmarks.MEDIAPIPE_TO_68` of the MediaPipe 478 mesh) of R
  reference frames of the speaker, flattened to (R, 136);
- output: `MOTION_POINTS` = K = 37 points, iBUG-68 jaw 0-16 (17), outer lips 48-59 (12) and inner
  lips 60-67 (8), i.e. MediaPipe indices `MOTION_MEDIAPIPE`. The model predicts their per-frame
  offsets from the speaker's template (the mean of these points over the reference frames); the
  landmarks of frame t are template + offsets[t].

Architecture: each video frame's mel window (W mel frames x 80 bins) is encoded by a small 1-D
conv net into one audio token; the T tokens (+ sinusoidal positions) pass through Conformer blocks
(Gulati et al. 2020: half-step FF, multi-head self-attention, depthwise-conv module, half-step FF,
LayerNorm), each with an extra cross-attention onto the identity tokens (one per reference frame).
A zero-initialised linear head gives the offsets, so an untrained model predicts the template.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from facefab.face.mesh import MEDIAPIPE_TO_68

from ..shared.conformer import ConformerBlock, sinusoidal_positions

MOTION_POINTS = np.r_[0:17, 48:68]  # iBUG-68 indices of the K predicted points
MOTION_MEDIAPIPE = MEDIAPIPE_TO_68[MOTION_POINTS]  # the same points as MediaPipe 478 indices
NUM_MOTION_POINTS = len(MOTION_POINTS)  # K = 37
NUM_IDENTITY_POINTS = 68
# Groups inside the K points.
JAW = slice(0, 17)
OUTER_LIPS = slice(17, 29)
INNER_LIPS = slice(29, 37)


def normalised_68(landmarks: np.ndarray, crop_size: float) -> np.ndarray:
    """(..., 478|68, >=2) crop-pixel landmarks -> (..., 68, 2) float32 normalised by the crop side."""
    points = np.asarray(landmarks, np.float32)[..., :2]
    if points.shape[-2] != 68:
        points = points[..., MEDIAPIPE_TO_68, :]
    return points / np.float32(crop_size)


def motion_points(points68: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., K, 2) the predicted lip/jaw subset."""
    return points68[..., MOTION_POINTS, :]


def pick_frames(valid: np.ndarray, count: int) -> np.ndarray:
    """`count` frame indices spread evenly over the valid frames (repeats when there are fewer)."""
    known = np.flatnonzero(valid)
    return known[np.round(np.linspace(0, len(known) - 1, count)).astype(int)]


# -- the model -------------------------------------------------------------------------------------------

class MyTalkMotion(ModelMixin, ConfigMixin):
    """mel windows (B, T, W, n_mels) + reference landmarks (B, R, 136) -> offsets (B, T, K, 2)."""

    @register_to_config
    def __init__(self, n_mels: int = 80, mel_window: int = 17, num_ref_frames: int = 8, d_model: int = 256,
                 num_layers: int = 6, num_heads: int = 4, ff_mult: int = 4, conv_kernel: int = 15,
                 dropout: float = 0.1, mel_mean: float = -6.0, mel_std: float = 4.0, offset_scale: float = 0.05):
        super().__init__()
        if d_model % num_heads or d_model % 2:
            raise ValueError(f"d_model ({d_model}) must be even and divisible by num_heads ({num_heads})")
        self.audio_encoder = nn.Sequential(
            nn.Conv1d(n_mels, d_model, 3, padding=1), nn.GELU(),
            nn.Conv1d(d_model, d_model, 3, stride=2, padding=1), nn.GELU())
        self.audio_proj = nn.Linear(d_model, d_model)
        self.identity_encoder = nn.Sequential(
            nn.Linear(NUM_IDENTITY_POINTS * 2, d_model), nn.GELU(), nn.Linear(d_model, d_model), nn.LayerNorm(d_model))
        self.blocks = nn.ModuleList(ConformerBlock(d_model, num_heads, ff_mult, conv_kernel, dropout)
                                    for _ in range(num_layers))
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, NUM_MOTION_POINTS * 2))
        nn.init.zeros_(self.head[1].weight)
        nn.init.zeros_(self.head[1].bias)

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        b, t, w, bins = mel.shape
        if bins != self.config.n_mels:
            raise ValueError(f"expected {self.config.n_mels} mel bins, got mel windows of shape {tuple(mel.shape)}")
        x = (mel - self.config.mel_mean) / self.config.mel_std
        x = self.audio_encoder(x.reshape(b * t, w, bins).transpose(1, 2)).mean(dim=-1)
        return self.audio_proj(x).reshape(b, t, -1)

    def forward(self, mel: torch.Tensor, ref_landmarks: torch.Tensor) -> torch.Tensor:
        """mel: (B,T,W,n_mels) log-mel windows; ref_landmarks: (B,R,136) normalised iBUG-68 (x, y)."""
        x = self.encode_audio(mel)
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        identity = self.identity_encoder(ref_landmarks - 0.5)
        for block in self.blocks:
            x = block(x, identity)
        offsets = self.head(x) * self.config.offset_scale
        return offsets.reshape(*x.shape[:2], NUM_MOTION_POINTS, 2)


def motion_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                velocity_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 on positions + L1 on frame-to-frame velocity, in percent of the crop side.

    pred, target: (B,T,K,2); weight: (B,T) 1 for frames with landmarks, 0 for filled-in ones.
    """
    pred, target = pred.float() * 100.0, target.float() * 100.0
    weight = torch.ones(pred.shape[:2], device=pred.device) if weight is None else weight.float()
    err = (pred - target).abs().mean(dim=(2, 3))
    position = (err * weight).sum() / weight.sum().clamp_min(1.0)
    vel_w = weight[:, 1:] * weight[:, :-1]
    vel_err = ((pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])).abs().mean(dim=(2, 3))
    velocity = (vel_err * vel_w).sum() / vel_w.sum().clamp_min(1.0)
    loss = position + velocity_weight * velocity
    return loss, {"loss": float(loss.detach()), "l1_pct": float(position.detach()),
                  "velocity_pct": float(velocity.detach())}


__all__ = [
    "INNER_LIPS",
    "JAW",
    "MOTION_MEDIAPIPE",
    "MOTION_POINTS",
    "NUM_MOTION_POINTS",
    "OUTER_LIPS",
    "MyTalkMotion",
    "motion_loss",
    "motion_points",
    "normalised_68",
    "pick_frames",
]

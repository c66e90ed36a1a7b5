"""GAIA stage 2: a diffusion model over sequences of motion latents, conditioned on speech and head pose.

One sample is `window` frames. Each frame is a token: its noisy motion latent (the VAE's motion
latent flattened) projected to d_model, plus its speech token (a small 1-D conv over the frame's
log-mel window, mean-pooled), plus its head pose (yaw, pitch, roll in degrees, relative to the
reference frame's) when given, plus the diffusion timestep's embedding and the frame's position. Conformer blocks (`facefab.models.shared.conformer`)
mix the tokens over time and attend (cross-attention) to two context tokens: the reference frame's
motion latent (the first frame's expression and pose to start from) and the timestep. A
zero-initialised head predicts the target of the scheduler (v or epsilon) per frame.

Conditions the sampler can leave out, each with a learned "absent" token trained by dropping it:
speech (classifier-free guidance compares with and without it) and pose (without it the model draws
its own head motion, which the motion latents carry, as the landmarks they encode turn with the head).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..shared.conformer import ConformerBlock, sinusoidal_positions


class GaiaMotionDiffusion(ModelMixin, ConfigMixin):
    """noisy motion latents (B,T,D) + timesteps (B,) + mel windows (B,T,W,n_mels) + reference motion
    latent (B,D) [+ pose (B,T,3) degrees] -> prediction (B,T,D)."""

    @register_to_config
    def __init__(self, motion_dim: int = 256, n_mels: int = 80, mel_window: int = 17, d_model: int = 512,
                 num_layers: int = 8, num_heads: int = 8, ff_mult: int = 4, conv_kernel: int = 15, dropout: float = 0.1,
                 mel_mean: float = -6.0, mel_std: float = 4.0, pose_scale: float = 30.0, window: int = 80):
        super().__init__()
        if d_model % num_heads or d_model % 2:
            raise ValueError(f"d_model ({d_model}) must be even and divisible by num_heads ({num_heads})")
        self.latent_in = nn.Linear(motion_dim, d_model)
        self.speech_encoder = nn.Sequential(
            nn.Conv1d(n_mels, d_model, 3, padding=1), nn.GELU(),
            nn.Conv1d(d_model, d_model, 3, stride=2, padding=1), nn.GELU())
        self.speech_proj = nn.Linear(d_model, d_model)
        self.no_speech = nn.Parameter(torch.zeros(d_model))
        self.pose_proj = nn.Sequential(nn.Linear(3, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.no_pose = nn.Parameter(torch.zeros(d_model))
        self.reference_proj = nn.Sequential(nn.Linear(motion_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.time_proj = Timesteps(d_model, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(d_model, d_model)
        self.blocks = nn.ModuleList(ConformerBlock(d_model, num_heads, ff_mult, conv_kernel, dropout)
                                    for _ in range(num_layers))
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, motion_dim))
        nn.init.zeros_(self.head[1].weight)
        nn.init.zeros_(self.head[1].bias)

    def encode_speech(self, mel: torch.Tensor) -> torch.Tensor:
        """(B,T,W,n_mels) log-mel windows -> (B,T,d_model) speech tokens."""
        b, t, w, bins = mel.shape
        if bins != self.config.n_mels:
            raise ValueError(f"expected {self.config.n_mels} mel bins, got mel windows of shape {tuple(mel.shape)}")
        x = (mel - self.config.mel_mean) / self.config.mel_std
        x = self.speech_encoder(x.reshape(b * t, w, bins).transpose(1, 2)).mean(dim=-1)
        return self.speech_proj(x).reshape(b, t, -1)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, mel: torch.Tensor, reference: torch.Tensor,
                pose: torch.Tensor | None = None, keep_speech: torch.Tensor | None = None,
                keep_pose: torch.Tensor | None = None) -> torch.Tensor:
        """keep_speech / keep_pose (B,) in {0, 1}: 0 replaces that sample's condition by its learned
        absent token (training dropout, the unconditional branch of guidance). pose None: absent."""
        b, t, _ = latents.shape
        dtype = latents.dtype
        timesteps = torch.as_tensor(timesteps, device=latents.device).reshape(-1).expand(b)
        time = self.time_embedding(self.time_proj(timesteps).to(dtype))  # (B, d)

        speech = self.encode_speech(mel.to(dtype))
        if keep_speech is not None:
            keep = keep_speech.to(dtype).reshape(b, 1, 1)
            speech = keep * speech + (1 - keep) * self.no_speech
        if pose is None:
            pose_tokens = self.no_pose.expand(b, t, -1)
        else:
            pose_tokens = self.pose_proj(pose.to(dtype) / self.config.pose_scale)
            if keep_pose is not None:
                keep = keep_pose.to(dtype).reshape(b, 1, 1)
                pose_tokens = keep * pose_tokens + (1 - keep) * self.no_pose

        x = self.latent_in(latents) + speech + pose_tokens + time[:, None]
        x = x + sinusoidal_positions(t, x.shape[-1], x.device, dtype)
        context = torch.stack([self.reference_proj(reference.to(dtype)), time], dim=1)
        for block in self.blocks:
            x = block(x, context)
        return self.head(x)


__all__ = ["GaiaMotionDiffusion"]

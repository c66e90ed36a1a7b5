"""Audio projection: per-frame speech features -> a few context tokens per frame (Hallo's AudioProjModel:
module names `proj1`, `proj2`, `proj3`, `norm`, so its released weights load by name)."""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class AudioProjModel(ModelMixin, ConfigMixin):
    """(B, F, seq_len, blocks, channels) -> (B, F, context_tokens, output_dim).

    Paper size (Hallo): wav2vec2 features, seq_len 5 frames, 12 layers x 768 channels. With facefab's
    log-mel features (`facefab.models.shared.speech.speech_windows`) blocks is the mel frames per video
    frame and channels 80."""

    @register_to_config
    def __init__(self, seq_len: int = 5, blocks: int = 12, channels: int = 768, intermediate_dim: int = 512,
                 output_dim: int = 768, context_tokens: int = 32):
        super().__init__()
        self.input_dim = seq_len * blocks * channels
        self.proj1 = nn.Linear(self.input_dim, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, audio_embeds: torch.Tensor) -> torch.Tensor:
        b, f = audio_embeds.shape[:2]
        x = audio_embeds.reshape(b * f, self.input_dim)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        x = self.proj3(x).reshape(b * f, self.config.context_tokens, self.config.output_dim)
        return self.norm(x).reshape(b, f, self.config.context_tokens, self.config.output_dim)


__all__ = ["AudioProjModel"]

"""Hallo's ImageProjModel: a face-identity embedding -> a few cross-attention tokens for both UNets.

Module names follow hallo/models/image_proj.py (`proj`, `norm`), so the released `imageproj.*` weights
load by name. The official input is insightface's ArcFace embedding (512); without one (no offline
weights) the pipeline feeds zeros, which is also the official unconditional input."""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class ImageProjModel(ModelMixin, ConfigMixin):
    """(B, clip_embeddings_dim) -> (B, clip_extra_context_tokens, cross_attention_dim)."""

    @register_to_config
    def __init__(self, cross_attention_dim: int = 768, clip_embeddings_dim: int = 512,
                 clip_extra_context_tokens: int = 4):
        super().__init__()
        self.proj = nn.Linear(clip_embeddings_dim, clip_extra_context_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(image_embeds).reshape(-1, self.config.clip_extra_context_tokens,
                                                 self.config.cross_attention_dim)
        return self.norm(tokens)


__all__ = ["ImageProjModel"]

"""V-Express' audio projection (official modules/audio_projection.py, same parameter names and shapes).

Not the shared `AudioProjModel` (Hallo's three-layer MLP): V-Express resamples each frame's speech
tokens with a Perceiver (IP-Adapter's Resampler): `num_queries` learned latents attend, `depth` times,
over the frame's tokens (plus a learned position embedding) and themselves, each time followed by a
feed-forward; the latents are projected to the denoiser's cross-attention width. Its output is the
`encoder_hidden_states` of the denoiser, whose spatial cross-attention (`attn2`) is the audio attention.

Input (N, max_seq_len, embedding_dim) per frame -> (N, num_queries, output_dim). The official
`num_latents_mean_pooled` option (0 in every released config) is left out.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class PerceiverAttention(nn.Module):
    """Latents attend over [tokens; latents] (keys/values from both, queries from the latents)."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, self.dim_head).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        tokens, latents = self.norm1(tokens), self.norm2(latents)
        q = self._heads(self.to_q(latents))
        k, v = (self._heads(t) for t in self.to_kv(torch.cat([tokens, latents], dim=1)).chunk(2, dim=-1))
        # softmax in fp32, as the official (which splits the 1/sqrt(d) scale over q and k for fp16)
        weight = torch.softmax((q @ k.transpose(-2, -1)).float() * self.dim_head ** -0.5, dim=-1).to(v.dtype)
        out = (weight @ v).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        return self.to_out(out)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LayerNorm, Linear, GELU, Linear (no biases), the official FeedForward's indices 0..3."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class AudioProjection(ModelMixin, ConfigMixin):
    """Per-frame speech tokens -> `num_queries` context tokens of `output_dim` (see the module docstring)."""

    @register_to_config
    def __init__(self, dim: int = 1024, depth: int = 8, dim_head: int = 64, heads: int = 16, num_queries: int = 8,
                 embedding_dim: int = 768, output_dim: int = 1024, ff_mult: int = 4, max_seq_len: int = 257):
        super().__init__()
        self.pos_emb = nn.Embedding(max_seq_len, embedding_dim)
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.config.max_seq_len:
            raise ValueError(f"{n} audio tokens per frame; this projection takes at most {self.config.max_seq_len}")
        x = self.proj_in(tokens + self.pos_emb(torch.arange(n, device=tokens.device)).to(tokens.dtype))
        latents = self.latents.to(x.dtype).expand(tokens.shape[0], -1, -1)
        for attention, ff in self.layers:
            latents = attention(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


__all__ = ["AudioProjection", "PerceiverAttention"]

"""The official token mappers (face_adapter/model_to_token.py), parameter names and shapes as released
(net_id2token.pth, net_image2token.pth):

- `ID2Token`: the Identity Encoder's transformer: a face-ID embedding (B, id_dim) -> `id_proj` to one token
  -> `max_length` learned queries (`query`) decoded against it by `num_layers` TransformerDecoder layers
  (`id2t`) -> (B, max_length, width) identity tokens, the UNet's cross-attention context in place of text.
- `Image2Token`: the attribute template: image-encoder tokens (B, L, visual_hidden) -> `visual_proj` ->
  the same query decoder (`i2t`) -> (B, max_length, width), the ControlNet's cross-attention context.

The official heads are width // 64; `heads` overrides that for widths under 64 (the tiny config).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


def _query_decoder(width: int, max_length: int, num_layers: int, heads: int | None, dim_feedforward: int):
    query = nn.Parameter(torch.randn((1, max_length, width)))
    layer = nn.TransformerDecoderLayer(d_model=width, nhead=heads or max(1, width // 64),
                                       dim_feedforward=dim_feedforward, batch_first=True)
    return query, nn.TransformerDecoder(layer, num_layers=num_layers)


class ID2Token(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, id_dim: int = 512, text_hidden_size: int = 768, max_length: int = 77, num_layers: int = 3,
                 heads: int | None = None, dim_feedforward: int = 2048):
        super().__init__()
        self.id_proj = nn.Linear(id_dim, text_hidden_size)
        self.text_hidden_size = text_hidden_size
        self.id2t = None
        if num_layers > 0:
            self.query, self.id2t = _query_decoder(text_hidden_size, max_length, num_layers, heads, dim_feedforward)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        out = self.id_proj(embedding).view(embedding.shape[0], -1, self.text_hidden_size)
        if self.id2t is not None:
            out = self.id2t(self.query.repeat(out.shape[0], 1, 1), out)
        return out


class Image2Token(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, visual_hidden_size: int = 1280, text_hidden_size: int = 768, max_length: int = 77,
                 num_layers: int = 3, heads: int | None = None, dim_feedforward: int = 2048):
        super().__init__()
        self.visual_proj = nn.Linear(visual_hidden_size, text_hidden_size)
        self.text_hidden_size = text_hidden_size
        self.i2t = None
        if num_layers > 0:
            self.query, self.i2t = _query_decoder(text_hidden_size, max_length, num_layers, heads, dim_feedforward)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.visual_proj(hidden).view(hidden.shape[0], -1, self.text_hidden_size)
        if self.i2t is not None:
            out = self.i2t(self.query.repeat(out.shape[0], 1, 1), out)
        return out


__all__ = ["ID2Token", "Image2Token"]

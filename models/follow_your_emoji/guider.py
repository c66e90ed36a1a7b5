"""The official landmark guider of Follow-Your-Emoji (models/guider.py `Guider`, lmk_guider.pth): the
AnimateAnyone pose guider, shared with V-Express (facefab.models.shared.guider): `conv_in` (3 -> 16),
`blocks.{0..5}` (per level a 3x3 conv and a stride-2 3x3 conv), `conv_out` (256 -> 320, zero at init);
infer.py builds it as Guider(conditioning_embedding_channels=320, block_out_channels=(16, 32, 96, 256)).
Its features are added to the denoiser's conv_in output (shared.guider.guider_conditioning)."""

from __future__ import annotations

from ..shared.guider import Guider


class LandmarkGuider(Guider):
    """Landmark image (B, 3, [F,] H, W) in [0, 1] -> features on the latent grid (the official `Guider`)."""


__all__ = ["LandmarkGuider"]

"""V-Express (Wang et al. 2024, tencent-ailab/V-Express): a talking portrait from one image and speech,
optionally following a head-pose track, with a latent video diffusion model.

- `v_kps_guider`: V-kps (eyes + nose tip) images from the face mesh, moved by a pose track, and
  `VKpsGuider`, which adds their features to the denoiser's first feature map.
- `audio_projection.AudioProjection`: the official Perceiver that turns each frame's speech tokens
  into the denoiser's cross-attention context (its spatial attn2 is the audio attention).
- `pipeline`: `VExpressNet` (reference net + denoiser + guider + projection, built on
  facefab.models.shared: reference attention, AnimateDiff motion modules, DDIM sampling over
  overlapping windows) and `VExpressPipeline` (the talking-head interface of shared.talking).
- `config`: `paper()` / `tiny()` (pixel latents, for tests and CPU) / `official()` (converted weights).
- `convert.convert(src, dst)`: the released model_ckpts/v-express/*.bin -> a facefab pipeline folder.

The three training stages (single frame, temporal, audio) are `facefab.training.v_express`.
"""

from .audio_projection import AudioProjection
from .config import official, paper, tiny
from .pipeline import VExpressNet, VExpressPipeline
from .v_kps_guider import VKpsGuider

__all__ = ["AudioProjection", "VExpressNet", "VExpressPipeline", "VKpsGuider", "official", "paper", "tiny"]

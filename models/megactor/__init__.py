"""MegActor (Yang et al. 2024, megvii-research/MegActor): a portrait animated by a raw driving video with a
latent video diffusion model (MagicAnimate's ReferenceNet + AnimateDiff denoiser).

- `encoders.ConditionInputLayer`: the official driving-video encoder (`unet.condition_input_layer`) with its
  AdaLN fusion of the reference image; `encoders.BackgroundEncoder`: a small trained stand-in for CLIP.
- `driving`: the official face-region preprocessing of the driving frames (face box kept and greyed, or the
  contour-preserving eye / mouth / brow patches) and the reference's background mask.
- `pipeline`: `MegActorNet` (appearance encoder + denoiser + driving encoder on facefab.models.shared: joined
  reference attention in the mid and up blocks, AnimateDiff motion modules, DDIM) and `MegActorPipeline`
  (the DrivenPipeline interface; 16-frame context windows overlapping by 8).
- `config`: `paper()` / `tiny()` / `official()`; `convert.convert(src, dst)`: the released weights/ folder
  (checkpoint-steps*.ckpt, appearance_encoder/, sd-vae-ft-mse/, StableDiffusion/image_encoder/) -> a
  facefab pipeline folder.

The training stages (spatial, temporal) are `facefab.training.megactor`.
"""

from .config import official, paper, tiny
from .encoders import BackgroundEncoder, ConditionInputLayer
from .pipeline import MegActorNet, MegActorPipeline

__all__ = ["BackgroundEncoder", "ConditionInputLayer", "MegActorNet", "MegActorPipeline", "official", "paper", "tiny"]

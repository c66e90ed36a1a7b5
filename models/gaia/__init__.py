"""GAIA (Microsoft 2023, arXiv 2311.15230): zero-shot talking avatars from one portrait and speech.

No official code is public; this follows the paper:

- `vae.GaiaVAE` (stage 1): an appearance encoder on one frame and a motion encoder on another frame's
  landmark image (`landmarks.landmark_image`, the 478-point MediaPipe mesh) whose decoder redraws the
  second frame; the motion latent is small, so it carries motion and not appearance.
- `motion_diffusion.GaiaMotionDiffusion` (stage 2): a Conformer diffusion model over sequences of motion
  latents, conditioned on speech (log-mel), the reference frame's motion latent and, optionally, head pose.
- `pipeline.GaiaPipeline`: portrait + speech (+ pose) -> frames (the talking-pipeline interface of
  `facefab.models.shared.talking`).
- `config`: paper-size defaults and `tiny()` configs.

The training systems (`facefab train gaia`: gaia-vae, then gaia-motion) are in `facefab.training.gaia`.
"""

from .config import motion_config, paper, tiny, vae_config
from .landmarks import landmark_batch, landmark_image
from .motion_diffusion import GaiaMotionDiffusion
from .pipeline import GaiaPipeline
from .vae import GaiaVAE

__all__ = ["GaiaMotionDiffusion", "GaiaPipeline", "GaiaVAE", "landmark_batch", "landmark_image", "motion_config",
           "paper", "tiny", "vae_config"]

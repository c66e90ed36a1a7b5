"""Follow-Your-Emoji (Ma et al. 2024, mayuelala/FollowYourEmoji): a portrait animated by the expressions of
a driving video through expression-aware landmarks, with a latent video diffusion model.

- `landmarks`: the official landmark images (eyes, brows, inner lips, pupils) from the 478-point mesh,
  the retargeting of driving landmarks onto the reference, the fine-grained loss masks.
- `guider.LandmarkGuider`: the official lmk_guider (features added after the denoiser's conv_in).
- `pipeline`: `FollowYourEmojiNet` (reference net + denoiser + guider on facefab.models.shared: joined
  reference attention, AnimateDiff motion modules, DDIM) and `FollowYourEmojiPipeline` (the DrivenPipeline
  interface; progressive keyframe + in-between sampling for long videos).
- `config`: `paper()` / `tiny()` / `official()`; `convert.convert(src, dst)`: the released
  referencenet.pth / unet.pth / lmk_guider.pth -> a facefab pipeline folder.

The two training stages (single frame, temporal) are `facefab.training.follow_your_emoji`.
"""

from .config import official, paper, tiny
from .guider import LandmarkGuider
from .pipeline import FollowYourEmojiNet, FollowYourEmojiPipeline

__all__ = ["FollowYourEmojiNet", "FollowYourEmojiPipeline", "LandmarkGuider", "official", "paper", "tiny"]

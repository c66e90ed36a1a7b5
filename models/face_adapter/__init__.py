"""Face-Adapter (Han et al., ECCV 2024, FaceAdapter/Face-Adapter): face swap and reenactment with a
ControlNet-adapted, frozen SD1.5 UNet and fine-grained identity / attribute control.

- `config`: `paper()` (SD1.5 sizes) / `tiny()` (64 px, pixel latents, a fresh tiny UNet trained too).
- `conditions`: the Spatial Condition Generator's landmark image (the official 70 points), adapting areas,
  blend mask and spatial condition.
- `area.AdaptingAreaPredictor`: the reenactment's adapting area (the official net_seg_res18).
- `face_id`: the Identity Encoder's face-ID backbone (a small trained CNN, or a TorchScript ArcFace).
- `tokens`: the official ID2Token / Image2Token (identity and attribute tokens).
- `net.FaceAdapterNet`: the parts wired; `pipeline.FaceAdapterPipeline`: swap / reenact of aligned crops.

Training (`facefab train face-adapter`) is `facefab.training.face_adapter`.
"""

from .area import AdaptingAreaPredictor
from .config import paper, tiny
from .face_id import FaceIdEncoder
from .net import FaceAdapterNet
from .pipeline import FaceAdapterPipeline
from .tokens import ID2Token, Image2Token

__all__ = ["AdaptingAreaPredictor", "FaceAdapterNet", "FaceAdapterPipeline", "FaceIdEncoder", "ID2Token",
           "Image2Token", "paper", "tiny"]

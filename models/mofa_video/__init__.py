"""MOFA-Video (Niu et al. 2024, MyNiuuu/MOFA-Video): image animation through sparse-to-dense motion: a
frozen image-to-video model (Stable Video Diffusion's spatio-temporal UNet) driven by a motion adapter
that warps the reference's features along a dense flow made from sparse hints (keypoints or trajectories).

- `flow`: sparse hints from point motion, the sparse-to-dense network (`SparseToDense`, the official CMP's
  layout), softsplat forward warping, the keypoint images.
- `controlnet`: `FlowControlNet` (the official ldmk_ctrlnet / traj_ctrlnet adapter, same parameter names),
  `ControlNetUNet` (SVD's UNet taking its residuals), `ImageEmbedder` (a small stand-in for CLIP).
- `pipeline`: `MofaVideoNet` and `MofaVideoPipeline` (the DrivenPipeline interface from driving meshes, and
  `animate_tracks` from trajectories; reference-anchored windows for long videos).
- `config`: `paper()` / `tiny()` / `official()`; `convert.convert(src, dst)`: the released ckpts/mofa
  (ldmk_controlnet/ or traj_controlnet/, stable-video-diffusion-img2vid-xt-1-1/, CMP) -> a pipeline folder.

Training (the adapter, the CMP, optionally the UNet) is `facefab.training.mofa_video`.
"""

from .config import official, paper, tiny
from .controlnet import ControlNetUNet, FlowControlNet, ImageEmbedder
from .flow import SparseToDense
from .pipeline import MofaVideoNet, MofaVideoPipeline

__all__ = ["ControlNetUNet", "FlowControlNet", "ImageEmbedder", "MofaVideoNet", "MofaVideoPipeline", "SparseToDense",
           "official", "paper", "tiny"]

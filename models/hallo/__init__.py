"""Hallo (Xu et al. 2024, "Hierarchical Audio-Driven Visual Synthesis for Portrait Image Animation";
github.com/fudan-generative-vision/hallo): one portrait + speech -> a talking video, built on the shared
diffusion parts (facefab.models.shared). The parts:

- `config`: the paper (released) sizes, `official()` (wav2vec2 features, what `convert` writes) and a
  `tiny` config (64 px, pixel latents) for tests and CPU runs.
- `face_locator.FaceLocator`: the face box image -> features added after the denoiser's conv_in.
- `image_proj.ImageProjModel`: face identity embedding -> cross-attention tokens (zeros without ArcFace).
- `masks`: face / lip boxes and the pose / face / lip region masks, from the MediaPipe mesh.
- `net.HalloNet`: the five trained parts (reference_unet, denoising_unet, face_locator, imageproj,
  audioproj: the official names) wired together: ReferenceNet attention, motion frames into the temporal
  modules, face-region features, audio attention weighted by the region masks.
- `pipeline.HalloPipeline`: the pipeline folder and generation (16-frame windows continued with 2
  motion frames, DDIM + classifier-free guidance), facefab.models.shared.talking's interface.
- `convert.convert`: the released pretrained_models/hallo/net.pth -> a pipeline folder.

Training: facefab.training.hallo (`facefab train hallo --stage stage1|stage2`).
"""

from .config import official, paper, tiny
from .face_locator import FaceLocator
from .image_proj import ImageProjModel
from .net import HalloNet
from .pipeline import HalloPipeline

__all__ = ["FaceLocator", "HalloNet", "HalloPipeline", "ImageProjModel", "official", "paper", "tiny"]

"""face-vid2vid: one-shot free-view talking-head synthesis (Wang et al., CVPR 2021).

`model` holds the networks (diffusers ModelMixin, `FaceVid2VidModel.from_pretrained(export_dir)`);
the trainable system is `facefab.training.facevid2vid.FaceVid2VidSystem`.
"""

from .model import TINY_CONFIG, FaceVid2VidModel

__all__ = ["FaceVid2VidModel", "TINY_CONFIG"]

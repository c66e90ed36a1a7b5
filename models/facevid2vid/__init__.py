"""face-vid2vid: one-shot free-view talking-head synthesis (Wang et al., CVPR 2021).

`model` holds the networks (diffusers ModelMixin, `FaceVid2VidModel.from_pretrained(export_dir)`);
`pipeline` turns a trained checkpoint folder into videos (`FaceVid2VidPipeline.from_pretrained(folder)`,
facefab.models.shared.driven's interface); the trainable system is
`facefab.training.facevid2vid.FaceVid2VidSystem`.
"""

from .model import TINY_CONFIG, FaceVid2VidModel
from .pipeline import FaceVid2VidPipeline

__all__ = ["TINY_CONFIG", "FaceVid2VidModel", "FaceVid2VidPipeline"]

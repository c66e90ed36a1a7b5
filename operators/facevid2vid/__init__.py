"""face-vid2vid: one-shot free-view talking-head synthesis (Wang et al., CVPR 2021).

`model` holds the networks (diffusers ModelMixin, `FaceVid2VidModel.from_pretrained(export_dir)`),
`training` the `FaceVid2VidSystem` that `facefab train facevid2vid` runs.
"""

from facefab.operators.facevid2vid.model import TINY_CONFIG, FaceVid2VidModel

__all__ = ["FaceVid2VidModel", "TINY_CONFIG"]

"""BeautyREC: component-specific neural makeup transfer (Yan et al., CVPRW 2023).

`model` holds the network (diffusers ModelMixin, `BeautyRECNet.from_pretrained(folder)`) and
`component_masks` (lips / skin / eye-shadow masks from facefab's parsing labels); `pipeline` runs a
checkpoint folder on numpy crops (`BeautyRECPipeline.from_pretrained(folder)`); `convert` turns the
official release into such a folder. The trainable system is `facefab.training.beautyrec.BeautyRECSystem`.
"""

from .model import COMPONENTS, TINY_CONFIG, BeautyRECNet, component_masks
from .pipeline import BeautyRECPipeline

__all__ = ["COMPONENTS", "TINY_CONFIG", "BeautyRECNet", "BeautyRECPipeline", "component_masks"]

"""MyTalk: two-stage neural lip dubbing (audio -> lip/jaw landmarks -> lip-region rendering).

- `motion.MyTalkMotion`: Conformer over per-frame mel windows, identity landmarks via cross-attention,
  outputs per-frame offsets of 37 lip/jaw points (iBUG-68 jaw 0-16 + lips 48-67).
- `renderer.MyTalkRenderer`: UNet over the masked lower-face box, a landmark sketch and reference lip
  crops; outputs lip-region RGB + a soft alpha.
- `pipeline.MyTalkPipeline`: loads both stages (motion/, renderer/) and dubs aligned crops.
- `config`: paper-size defaults and `tiny()` configs.

The trainable systems are in `facefab.training.mytalk`; the dub stage that runs the pipeline is
`facefab.operators.dub.LipSync`.
"""

from .config import motion_config, paper, render_config, tiny
from .motion import MOTION_MEDIAPIPE, MOTION_POINTS, MyTalkMotion
from .pipeline import MyTalkOutput, MyTalkPipeline
from .renderer import MyTalkRenderer

__all__ = [
    "MOTION_MEDIAPIPE",
    "MOTION_POINTS",
    "MyTalkMotion",
    "MyTalkOutput",
    "MyTalkPipeline",
    "MyTalkRenderer",
    "motion_config",
    "paper",
    "render_config",
    "tiny",
]

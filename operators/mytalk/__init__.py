"""MyTalk: two-stage neural lip dubbing (audio -> lip/jaw landmarks -> lip-region rendering).

- `motion.MyTalkMotion`: Conformer over per-frame mel windows, identity landmarks via cross-attention,
  outputs per-frame offsets of 37 lip/jaw points (iBUG-68 jaw 0-16 + lips 48-67).
- `renderer.MyTalkRenderer`: UNet over the masked lower-face box, a landmark sketch and reference lip
  crops; outputs lip-region RGB + a soft alpha.
- `inference.MyTalkPipeline` / `inference.MyTalkDub`: load both stages (motion/, renderer/), dub a video.
- `training.MyTalkMotionSystem` / `training.MyTalkRenderSystem`: `facefab train mytalk` systems.
- `config`: paper-size defaults and `tiny()` configs.
"""

from facefab.operators.mytalk.config import motion_config, paper, render_config, tiny
from facefab.operators.mytalk.inference import MyTalkDub, MyTalkOutput, MyTalkPipeline
from facefab.operators.mytalk.motion import MOTION_MEDIAPIPE, MOTION_POINTS, MyTalkMotion
from facefab.operators.mytalk.renderer import MyTalkRenderer
from facefab.operators.mytalk.training import SYSTEMS, MyTalkMotionSystem, MyTalkRenderSystem, get_system

__all__ = [
    "MOTION_MEDIAPIPE",
    "MOTION_POINTS",
    "SYSTEMS",
    "MyTalkDub",
    "MyTalkMotion",
    "MyTalkMotionSystem",
    "MyTalkOutput",
    "MyTalkPipeline",
    "MyTalkRenderSystem",
    "MyTalkRenderer",
    "get_system",
    "motion_config",
    "paper",
    "render_config",
    "tiny",
]

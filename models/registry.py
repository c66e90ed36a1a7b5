"""The generator registry: which face/avatar generators facefab knows and what each needs.

Every generator is one entry: its task (the generation manifest kind it fills: dub / animate /
makeup / swap), the job columns it needs (as named in the generation manifest: video_uri,
audio_uri, reference_uri), its weight-free default (what runs without a checkpoint, or "none yet"),
and, once implemented, the import paths of its operator and model. Checkpoints are configured per
generator with $FACEFAB_CHECKPOINT_<NAME> (e.g. FACEFAB_CHECKPOINT_MYTALK=s3://bucket/mytalk) or a
config mapping; `facefab models` prints this table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from facefab.manifests.registry import Registry

ENV_PREFIX = "FACEFAB_CHECKPOINT_"
TASKS = ("dub", "animate", "makeup", "swap")


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    title: str
    task: str
    inputs: tuple[str, ...]  # generation-manifest columns the job row must fill
    summary: str
    weight_free_default: str = "none yet"
    operator: str | None = None  # "module:Class" once implemented
    model: str | None = None  # "module:Class" of the loadable model/pipeline
    trainable: tuple[str, ...] = ()  # TrainableSystem names (facefab train)
    converter: str | None = None  # "module:function" turning a released checkpoint into our folder

    @property
    def status(self) -> str:
        return "implemented" if self.operator else "planned"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["inputs"] = list(self.inputs)
        out["trainable"] = list(self.trainable)
        out["status"] = self.status
        return out


GENERATORS: Registry[GeneratorSpec] = Registry("generator")
_ANIMATE = "facefab.operators.animate:AnimatePortrait"
_TALKING_PHOTO = "talking photo (facefab animate --model weightfree)"
_REENACT = "facefab.operators.reenact:ReenactPortrait"
_MESH_REENACTMENT = "mesh-driven reenactment (facefab animate --driving VIDEO --model weightfree)"

for _spec in [
    GeneratorSpec("beautyrec", "BeautyREC", "makeup", ("video_uri", "reference_uri"),
                  "makeup transfer from a reference face onto the video's face",
                  weight_free_default="region colour transfer (facefab makeup --model weightfree)",
                  operator="facefab.operators.makeup:ApplyMakeup", model="facefab.models.beautyrec:BeautyRECPipeline", trainable=("beautyrec",),
                  converter="facefab.models.beautyrec.convert:convert"),
    GeneratorSpec("follow-your-emoji", "Follow-Your-Emoji", "animate", ("reference_uri", "video_uri"),
                  "portrait animation driven by the expression landmarks of a driving video",
                  weight_free_default=_MESH_REENACTMENT, operator=_REENACT,
                  model="facefab.models.follow_your_emoji:FollowYourEmojiPipeline", trainable=("follow-your-emoji",),
                  converter="facefab.models.follow_your_emoji.convert:convert"),
    GeneratorSpec("gaia", "GAIA", "animate", ("reference_uri", "audio_uri"),
                  "talking avatar from one portrait and speech (motion/appearance disentangled)",
                  weight_free_default=_TALKING_PHOTO, operator=_ANIMATE, model="facefab.models.gaia:GaiaPipeline",
                  trainable=("gaia", "gaia-vae", "gaia-motion")),
    GeneratorSpec("v-express", "V-Express", "animate", ("reference_uri", "audio_uri"),
                  "talking portrait from one image and speech, optional pose video",
                  weight_free_default=_TALKING_PHOTO, operator=_ANIMATE,
                  model="facefab.models.v_express:VExpressPipeline", trainable=("v-express",),
                  converter="facefab.models.v_express.convert:convert"),
    GeneratorSpec("megactor", "MegActor", "animate", ("reference_uri", "video_uri"),
                  "portrait animation from a raw driving video",
                  weight_free_default=_MESH_REENACTMENT, operator=_REENACT,
                  model="facefab.models.megactor:MegActorPipeline", trainable=("megactor",),
                  converter="facefab.models.megactor.convert:convert"),
    GeneratorSpec("face-adapter", "Face-Adapter", "swap", ("reference_uri", "video_uri"),
                  "face swap / reenactment of the reference identity onto the video",
                  weight_free_default="mesh face swap (facefab swap --model weightfree)",
                  operator="facefab.operators.swap:SwapFace", model="facefab.models.face_adapter:FaceAdapterPipeline",
                  trainable=("face-adapter",)),
    GeneratorSpec("hallo", "Hallo", "animate", ("reference_uri", "audio_uri"),
                  "audio-driven portrait animation (hierarchical audio-visual attention)",
                  weight_free_default=_TALKING_PHOTO, operator=_ANIMATE, model="facefab.models.hallo:HalloPipeline",
                  trainable=("hallo",), converter="facefab.models.hallo.convert:convert"),
    GeneratorSpec("mytalk", "MyTalk", "dub", ("video_uri", "audio_uri"),
                  "lip dubbing: Conformer audio->lip/jaw landmarks, then a UNet renders the lip region",
                  operator="facefab.operators.dub:LipSync",
                  model="facefab.models.mytalk:MyTalkPipeline",
                  trainable=("mytalk", "mytalk-motion", "mytalk-render")),
    GeneratorSpec("mofa-video", "MOFA-Video", "animate", ("reference_uri", "video_uri"),
                  "image animation through sparse-to-dense motion (landmark / trajectory hints)",
                  weight_free_default=_MESH_REENACTMENT, operator=_REENACT,
                  model="facefab.models.mofa_video:MofaVideoPipeline", trainable=("mofa-video",),
                  converter="facefab.models.mofa_video.convert:convert"),
    GeneratorSpec("face-vid2vid", "face-vid2vid", "animate", ("reference_uri", "video_uri"),
                  "one-shot talking-head reenactment with 3D keypoints", weight_free_default=_MESH_REENACTMENT,
                  operator=_REENACT, model="facefab.models.facevid2vid:FaceVid2VidPipeline",
                  trainable=("facevid2vid",)),
]:
    GENERATORS.register(_spec.name)(_spec)


def get(name: str) -> GeneratorSpec:
    return GENERATORS.get(name.lower())


def env_var(name: str) -> str:
    """FACEFAB_CHECKPOINT_<NAME>: the name upper-cased, non-alphanumerics as '_'."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")


def checkpoint_for(name: str, config: Mapping[str, Any] | None = None,
                   env: Mapping[str, str] | None = None) -> str | None:
    """The configured checkpoint URI of generator `name`, or None.

    `config` wins over the environment: {name: uri} or {name: {"checkpoint": uri}}, optionally
    nested under a "models" key (the shape of a YAML config file).
    """
    spec = get(name)
    if config:
        section = config.get("models", config) if isinstance(config.get("models"), Mapping) else config
        value = section.get(spec.name)
        if isinstance(value, Mapping):
            value = value.get("checkpoint")
        if value:
            return str(value)
    env = os.environ if env is None else env
    return env.get(env_var(spec.name)) or None


def checkpoint_configured(name: str, config: Mapping[str, Any] | None = None,
                          env: Mapping[str, str] | None = None) -> bool:
    return checkpoint_for(name, config, env) is not None


def load_operator(name: str):
    """The operator class of an implemented generator."""
    import importlib

    spec = get(name)
    if not spec.operator:
        raise NotImplementedError(f"{spec.title} is planned but not implemented yet")
    module, cls = spec.operator.split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = [
    "GENERATORS",
    "TASKS",
    "GeneratorSpec",
    "checkpoint_configured",
    "checkpoint_for",
    "env_var",
    "get",
    "load_operator",
]

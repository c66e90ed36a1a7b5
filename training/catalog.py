"""The training systems there are: importing their modules fills the SYSTEMS registry.

The system modules import torch and the models (seconds), so they are imported here on first use,
not when `facefab.training` is.
"""

from __future__ import annotations

from facefab.manifests.registry import Registry

from .systems import PIPELINES, SYSTEMS, TrainingSystem


def load_systems() -> Registry[type[TrainingSystem]]:
    """SYSTEMS with every system of facefab registered."""
    from . import (  # noqa: F401 -- registered on import
        beautyrec, face_adapter, facevid2vid, follow_your_emoji, gaia, hallo, megactor, mofa_video, mytalk, v_express)

    return SYSTEMS


def system_class(name: str) -> type[TrainingSystem]:
    """The class registered as `name`; ValueError (a usage error) when there is none."""
    try:
        return load_systems().get(name)
    except KeyError:
        raise ValueError(f"unknown training system {name!r}; choose from {trainable_names()}") from None


def load_system(name: str) -> TrainingSystem:
    """A fresh instance of the system registered as `name`."""
    return system_class(name)()


def stages_of(name: str) -> tuple[str, ...]:
    """The systems `facefab train name` runs, in order: a registered pipeline's, or the one system."""
    load_systems()
    if name in PIPELINES:
        return PIPELINES.get(name)
    system_class(name)  # ValueError naming the choices
    return (name,)


def trainable_names() -> list[str]:
    """Every name `facefab train` accepts: pipelines, then single systems."""
    load_systems()
    return [*PIPELINES.names(), *SYSTEMS.names()]


def export_untrained(name: str, folder: str, preset: str = "tiny") -> str:
    """A loadable but untrained checkpoint of `facefab train name` at `preset`: every stage's export,
    merged into the local `folder` (benchmarks and plumbing tests of the load/generate path)."""
    for stage in stages_of(name):
        system = load_system(stage)
        if preset not in system.presets and preset != "paper":
            raise ValueError(f"{stage} has no preset {preset!r}; it has {sorted(system.presets)}")
        config = {**system.default_config(), **system.presets.get(preset, {})}
        system.configure(config)
        system.export(system.build_model(config), folder)
    return folder

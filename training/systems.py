"""The training-system contract and the registry the systems file themselves in.

A system is what `facefab train SYSTEM` trains: it builds the model, turns one manifest row into
samples, computes the loss and exports the result. The runtime (Ray Train + DeepSpeed) knows
nothing else about it. A system module registers its classes:

    @SYSTEMS.register("facevid2vid")
    class FaceVid2VidSystem(TrainingSystemBase):
        name = "facevid2vid"
        ...

Systems are instantiated with no arguments and must be picklable: the configured instance is what
Ray Data tasks and the train workers receive. This module imports no system (they pull in torch
and the models); `facefab.training.catalog.load_systems()` does, and fills SYSTEMS.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from facefab.manifests.registry import Registry

if TYPE_CHECKING:
    import torch

Sample = dict[str, "np.ndarray"]


def sample_rng(row: dict[str, Any], seed: int | None) -> np.random.Generator:
    """The generator a system's make_samples draws from: fresh draws on every call (seed None, the
    default: every pass over the data sees new samples), or the same draws for the same row and seed
    (the `seed` system option: a reproducible run, each pass seeing the same samples)."""
    if seed is None:
        return np.random.default_rng()
    key = str(row.get("id") or row.get("crop_uri"))
    return np.random.default_rng([int(seed), int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)])


class TrainingSystem(Protocol):
    """What the runtime calls, in order: configure, build_model, make_samples (Ray Data tasks),
    loss (every step), make_eval_samples + evaluate (rank 0, at every checkpoint), export (the end)."""

    name: str
    presets: ClassVar[dict[str, dict[str, Any]]]   # --preset name -> model kwargs (e.g. "tiny")
    stages: ClassVar[dict[str, dict[str, Any]]]    # --stage name -> option overrides (a stage is config)
    # CKPT_ROOT/<export_group>/: a folder every export of the group is merged into (facefab.training.export)
    export_group: ClassVar[str | None]
    # set by the runtime before training (driver, data tasks and workers see them): that folder of this run
    # (None without an export group) and the storage options to read it, so a later stage finds the
    # earlier stages' exports
    group_uri: str | None
    storage_options: dict[str, Any] | None

    def default_config(self) -> dict[str, Any]:
        """Model kwargs at paper size."""
        ...

    def configure(self, model_config: dict[str, Any] | None = None, stage: str = "",
                  options: dict[str, Any] | None = None) -> None:
        """Called before anything else with the resolved model kwargs, --stage and --system-options."""
        ...

    def build_model(self, model_config: dict[str, Any]) -> torch.nn.Module:
        """A diffusers ModelMixin (export uses its save_pretrained layout)."""
        ...

    def make_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[Sample]:
        """Training samples of one manifest row; re-run on every pass over the data."""
        ...

    def make_eval_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[Sample]:
        """Deterministic samples of one held-out row, for evaluate()."""
        ...

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to minimise, scalars to log)."""
        ...

    def evaluate(self, model: torch.nn.Module, samples: list[Sample]) -> dict[str, float]:
        """Held-out metrics (e.g. psnr) of the model over make_eval_samples' samples."""
        ...

    def export(self, model: torch.nn.Module, out_dir: str) -> None:
        """Write the trained model into the local folder `out_dir` (which may hold other exports)."""
        ...


class TrainingSystemBase:
    """The optional part of TrainingSystem, as "not supported": no presets, stages, options or
    held-out evaluation, no export group. A system overrides what it has."""

    name: str = ""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    stages: ClassVar[dict[str, dict[str, Any]]] = {}
    export_group: ClassVar[str | None] = None
    group_uri: str | None = None
    storage_options: dict[str, Any] | None = None

    def configure(self, model_config: dict[str, Any] | None = None, stage: str = "",
                  options: dict[str, Any] | None = None) -> None:
        if stage or options:
            raise ValueError(f"{self.name} has no stages or options (no configure())")

    def make_eval_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[Sample]:
        """None: a system without evaluate() needs no held-out samples decoded. A system that
        evaluates overrides both (e.g. with its make_samples, made deterministic)."""
        return []

    def evaluate(self, model: torch.nn.Module, samples: list[Sample]) -> dict[str, float]:
        return {}


SYSTEMS: Registry[type[TrainingSystem]] = Registry("training system")

# name -> the systems trained one after another under that name (`facefab train mytalk` trains
# mytalk-motion, then mytalk-render, into the same CKPT_ROOT)
PIPELINES: Registry[tuple[str, ...]] = Registry("training pipeline")

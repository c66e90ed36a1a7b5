"""The folder layout the diffusion pipelines share (Hallo, V-Express, Follow-Your-Emoji): one
save_pretrained subfolder per part (safetensors), the pipeline's config as pipeline.json, and a
diffusers-style model_index.json naming the pipeline class and each part's class."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from torch import nn

from ..weights import CheckpointError, load_model

CONFIG_FILE = "pipeline.json"
INDEX_FILE = "model_index.json"


def write_index(folder: str, class_name: str, classes: dict[str, type]) -> None:
    index = {"_class_name": class_name,
             **{name: [cls.__module__.split(".")[0], cls.__name__] for name, cls in classes.items()}}
    with open(os.path.join(folder, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)


def check_index(folder: str, class_name: str, title: str) -> None:
    """CheckpointError when `folder`'s model_index.json names another pipeline class (a folder without an
    index passes: a bare save_pretrained model)."""
    index = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            name = json.load(f).get("_class_name")
        if name != class_name:
            raise CheckpointError(f"checkpoint {title} holds a {name!r}, not a {class_name}")


def write_config(folder: str, config: dict) -> None:
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def save_parts(parts: dict[str, nn.Module], folder: str, config: dict, class_name: str) -> None:
    """Write `parts` as subfolders, the (checked) `config` as pipeline.json and model_index.json."""
    os.makedirs(folder, exist_ok=True)
    for name, module in parts.items():
        getattr(module, "module", module).save_pretrained(os.path.join(folder, name), safe_serialization=True)
    write_config(folder, config)
    write_index(folder, class_name, {name: type(module) for name, module in parts.items()})


def read_config(folder: str, check: Callable[[dict], dict], title: str) -> dict:
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder} has no {CONFIG_FILE}: not a {title} pipeline folder")
    with open(path) as f:
        return check(json.load(f))


def load_parts(folder: str, part_classes: dict[str, type], title: str, system: str, device: Any = "cpu",
               dtype: Any = "fp32") -> dict[str, nn.Module]:
    """Every part of a local pipeline folder; a missing one names `facefab train <system>` as its source."""
    for name in part_classes:
        if not os.path.isdir(os.path.join(folder, name)):
            raise CheckpointError(f"{title} checkpoint {folder} has no {name}/ (train it with `facefab train "
                                  f"{system}` or convert a released one)")
    return {name: load_model(cls, folder, device=device, dtype=dtype, subfolder=name)
            for name, cls in part_classes.items()}


__all__ = ["CONFIG_FILE", "INDEX_FILE", "load_parts", "read_config", "save_parts", "write_config", "write_index"]

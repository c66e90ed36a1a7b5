"""The released MegActor weights (huggingface HVSiniX/RawVideoDriven: weights/checkpoint-steps9000.ckpt,
appearance_encoder/, sd-vae-ft-mse/, StableDiffusion/) -> a facefab pipeline folder (`facefab convert
megactor SRC DST`).

The official animate.py builds the MagicAnimate module (appearance_encoder + unet + vae + text encoder) and
loads the checkpoint's `state_dict` into it by name: keys `appearance_encoder.*` and `unet.*`, with or
without DeepSpeed's `module.` prefix. Here, read with torch.load(weights_only=True) (tensors only, no code)
and written as safetensors:

- `appearance_encoder.*` -> appearance_encoder/ (AppearanceEncoderModel, SD1.5's UNet2DConditionModel
  layout, the same names; the official drops the last up block's final attention parts and conv_out, which
  stay fresh here: nothing reads them).
- `unet.condition_input_layer.*` -> condition_input_layer/ (the same names: spatial_conv_layers,
  spatial_conv_out, refer_convs, refer_linears, refer_linears_out).
- the rest of `unet.*` -> unet/: spatial keys as they are (conv_in is the official 13-channel one), motion
  modules from AnimateDiff's names to diffusers' (shared.checkpoints.motion_key).
- `vae.*`, `text_encoder.*` (frozen sub-models of the official module) are skipped.
- What the checkpoint lacks is looked for where the official loads it from: appearance_encoder/
  (appearance_encoder/appearance_encoder/ as the official subfolder) for the appearance encoder.
- sd-vae-ft-mse/ (else StableDiffusion/vae/) -> vae/, StableDiffusion/image_encoder/ -> image_encoder/.

Every official tensor not placed (unknown name or other shape) is listed in the report; every facefab tensor
none filled keeps its fresh initialisation and is listed too.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any

import torch

from ..shared.checkpoints import (
    WEIGHTS_NAME,
    complete,
    load_pickle,
    motion_key,
    place,
    weights_to_safetensors,
    write_part,
)
from ..shared.pipeline_folder import write_config, write_index
from .config import check, official
from .pipeline import CLASS_NAME, IMAGE_ENCODER_FOLDER, PART_CLASSES, VAE_FOLDER, build_parts, part_names

log = logging.getLogger(__name__)

SKIPPED = ("vae.", "text_encoder.", "image_encoder.")
APPEARANCE_FOLDERS = (os.path.join("appearance_encoder", "appearance_encoder"), "appearance_encoder")
EXTRAS = {VAE_FOLDER: (("sd-vae-ft-mse", os.path.join("StableDiffusion", "vae")),
                       (WEIGHTS_NAME, "diffusion_pytorch_model.bin"), WEIGHTS_NAME),
          IMAGE_ENCODER_FOLDER: ((os.path.join("StableDiffusion", "image_encoder"),),
                                 ("model.safetensors", "pytorch_model.bin"), "model.safetensors")}


def split_key(key: str) -> tuple[str | None, str]:
    """(facefab part, facefab key) of a key of the official checkpoint; part None: not a trained part."""
    key = key.removeprefix("module.")
    if key.startswith("unet.condition_input_layer."):
        return "condition_input_layer", key.removeprefix("unet.condition_input_layer.")
    if key.startswith("unet."):
        return "unet", motion_key(key.removeprefix("unet."))
    if key.startswith("appearance_encoder."):
        return "appearance_encoder", key.removeprefix("appearance_encoder.")
    return None, key


def find_checkpoint(src: str) -> str:
    """The official checkpoint: `src` itself, or the newest checkpoint-steps*.ckpt (else any *.ckpt) in
    `src` or src/weights/."""
    if os.path.isfile(src):
        return src
    for folder in (src, os.path.join(src, "weights")):
        found = sorted(glob.glob(os.path.join(folder, "checkpoint-steps*.ckpt")),
                       key=lambda p: int("".join(c for c in os.path.basename(p) if c.isdigit()) or 0))
        found = found or sorted(glob.glob(os.path.join(folder, "*.ckpt")))
        if found:
            return found[-1]
    raise FileNotFoundError(f"{src}: no checkpoint-steps*.ckpt there or in weights/ (the official weights/ layout)")


def _appearance_fallback(root: str) -> dict[str, torch.Tensor]:
    for name in APPEARANCE_FOLDERS:
        for weights in (WEIGHTS_NAME, "diffusion_pytorch_model.bin"):
            path = os.path.join(root, name, weights)
            if os.path.isfile(path):
                if weights.endswith(".safetensors"):
                    from safetensors.torch import load_file

                    return load_file(path)
                return load_pickle(path)
    return {}


def convert(src: str, dst: str, config: dict | None = None) -> dict[str, Any]:
    """Write the facefab pipeline folder `dst` from the official weights under `src` (see the module
    docstring); `config` defaults to `config.official()`. Returns the report: mapped (count), unmapped
    (official tensors not placed), skipped (frozen sub-models' tensors), missing (facefab tensors left
    fresh), extras."""
    from accelerate import init_empty_weights

    config = check(config or official())
    path = find_checkpoint(src)
    root = os.path.dirname(path)
    with init_empty_weights():
        empty = build_parts(config)
    grouped: dict[str, dict[str, torch.Tensor]] = {name: {} for name in empty}
    unmapped, skipped = [], 0
    for key, tensor in load_pickle(path).items():
        part, ours = split_key(key)
        if part in grouped:
            grouped[part][ours] = tensor
        elif key.removeprefix("module.").startswith(SKIPPED):
            skipped += 1
        else:
            unmapped.append(f"{os.path.basename(path)}:{key}")
    mapped, missing = 0, {}
    os.makedirs(dst, exist_ok=True)
    for part, module in empty.items():
        expected = {k: v.shape for k, v in module.state_dict().items()}
        state, rest = place(grouped[part], expected, f"{os.path.basename(path)}:{part}", lambda k: k)
        unmapped += rest
        if part == "appearance_encoder" and set(expected) - set(state):
            placed, _ = place(_appearance_fallback(root), expected, "appearance_encoder/", lambda k: k)
            state.update({k: v for k, v in placed.items() if k not in state})
        absent = complete(state, expected, lambda part=part: build_parts(config, only=(part,))[part].state_dict())
        missing.update({part: absent} if absent else {})
        mapped += len(expected) - len(absent)
        write_part(os.path.join(dst, part), module, state)
    write_config(dst, config)
    write_index(dst, CLASS_NAME, {name: PART_CLASSES[name] for name in part_names(config)})
    extras = {}
    for folder, (candidates, sources, out_name) in EXTRAS.items():
        if folder == VAE_FOLDER and config["latent"]["type"] != "vae":
            continue
        sources_found = [os.path.join(base, c) for base in dict.fromkeys([root, os.path.dirname(root)])
                         for c in candidates if os.path.isfile(os.path.join(base, c, "config.json"))]
        extras[folder] = any(weights_to_safetensors(s, os.path.join(dst, folder), sources, out_name)
                             for s in sources_found[:1])
    if unmapped or missing:
        log.warning("megactor convert: %d official tensors not placed (e.g. %s); fresh, with no official value: %s",
                    len(unmapped), unmapped[:3], {part: len(keys) for part, keys in missing.items()})
    return {"mapped": mapped, "unmapped": unmapped, "skipped": skipped, "missing": missing, "extras": extras,
            "dst": dst}


__all__ = ["convert", "find_checkpoint", "split_key"]

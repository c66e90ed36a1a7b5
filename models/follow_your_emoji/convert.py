"""The released Follow-Your-Emoji checkpoint (huggingface YueMafighting/FollowYourEmoji: referencenet.pth,
unet.pth, lmk_guider.pth, next to sd-vae-ft-mse/, sd-image-variations-diffusers/ and AnimateDiff/) -> a
facefab pipeline folder (`facefab convert follow-your-emoji SRC DST`).

The .pth files are pickles: they are read with torch.load(weights_only=True) (tensors only, no code) and
written as safetensors. Key by key (infer.py loads each by name into its module):

- referencenet.pth (ReferenceNet2DConditionModel, SD1.5's UNet2DConditionModel layout) -> reference_net/,
  the same names.
- unet.pth (UNet3DConditionModel; InflatedConv3d / Transformer3DModel keep diffusers' 2D names) ->
  denoising_unet/: spatial keys as they are; motion modules (`down_blocks.i.motion_modules.j.
  temporal_transformer...`, AnimateDiff's names) renamed to diffusers' (shared.checkpoints.motion_key).
  Motion keys missing from unet.pth are taken from AnimateDiff's mm_sd_v15_v2.ckpt when it is found
  (the official builds the UNet from it before loading unet.pth).
- lmk_guider.pth (`Guider`: conv_in, blocks.0-5, conv_out) -> lmk_guider/, the same names.
- sd-vae-ft-mse/ -> vae/, sd-image-variations-diffusers/image_encoder/ -> image_encoder/ (optional).

Every official tensor that is not placed (unknown name or other shape) is listed in the report, and every
facefab tensor no official one filled keeps its fresh initialisation and is listed too.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..shared.checkpoints import WEIGHTS_NAME, load_pickle, motion_key, place, weights_to_safetensors, write_part
from ..shared.pipeline_folder import write_config, write_index
from .config import check, official
from .pipeline import CLASS_NAME, IMAGE_ENCODER_FOLDER, PART_CLASSES, VAE_FOLDER, build_parts

log = logging.getLogger(__name__)

OFFICIAL_FILES = {"reference_net": "referencenet.pth", "denoising_unet": "unet.pth", "lmk_guider": "lmk_guider.pth"}
MOTION_FILES = ("AnimateDiff/mm_sd_v15_v2.ckpt", "mm_sd_v15_v2.ckpt")


def official_to_facefab(part: str, key: str) -> str:
    """The facefab name of an official parameter of `part` (the same name where nothing differs)."""
    key = key.removeprefix("module.")
    return motion_key(key) if part == "denoising_unet" else key


def _find_official(src: str) -> str:
    for folder in (src, os.path.join(src, "follow-your-emoji"), os.path.join(src, "pretrained_models", "follow-your-emoji")):
        if os.path.isfile(os.path.join(folder, OFFICIAL_FILES["denoising_unet"])):
            return folder
    raise FileNotFoundError(f"{src}: no {OFFICIAL_FILES['denoising_unet']} there or in follow-your-emoji/, "
                            "pretrained_models/follow-your-emoji/ (the layout of the official pretrained_models/)")


def _bases(root: str) -> list[str]:
    """Where the side models may be: the checkpoint folder and the two folders above it."""
    up = os.path.dirname(root.rstrip("/"))
    return list(dict.fromkeys([root, up, os.path.dirname(up)]))


def _empty_parts(config: dict) -> dict[str, torch.nn.Module]:
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build_parts(config)


def convert_extras(root: str, dst: str, vae: bool = True) -> dict[str, bool]:
    """vae/ from sd-vae-ft-mse/ and image_encoder/ from sd-image-variations-diffusers/image_encoder/ (the
    official config's paths), looked for in and above `root`; whether each was written."""
    wanted = {VAE_FOLDER: ("sd-vae-ft-mse", (WEIGHTS_NAME, "diffusion_pytorch_model.bin"), WEIGHTS_NAME),
              IMAGE_ENCODER_FOLDER: (os.path.join("sd-image-variations-diffusers", "image_encoder"),
                                     ("model.safetensors", "pytorch_model.bin"), "model.safetensors")}
    if not vae:
        wanted.pop(VAE_FOLDER)
    found = dict.fromkeys(wanted, False)
    for base in _bases(root):
        for folder, (name, sources, out_name) in wanted.items():
            src = os.path.join(base, name)
            if not found[folder] and os.path.isfile(os.path.join(src, "config.json")):
                found[folder] = weights_to_safetensors(src, os.path.join(dst, folder), sources, out_name)
    return found


def convert(src: str, dst: str, config: dict | None = None) -> dict[str, Any]:
    """Write the facefab pipeline folder `dst` from the official checkpoint under `src` (see the module
    docstring); `config` defaults to `config.official()`. Returns the report: mapped (count), unmapped
    (official tensors not placed), missing (facefab tensors left fresh), extras."""
    config = check(config or official())
    root = _find_official(src)
    empty = _empty_parts(config)
    mapped, unmapped, missing = 0, [], {}
    os.makedirs(dst, exist_ok=True)
    for part, module in empty.items():
        expected = {k: v.shape for k, v in module.state_dict().items()}
        state: dict[str, torch.Tensor] = {}
        path = os.path.join(root, OFFICIAL_FILES[part])
        if os.path.isfile(path):
            placed, rest = place(load_pickle(path), expected, OFFICIAL_FILES[part],
                                 lambda key, part=part: official_to_facefab(part, key))
            state.update(placed)
            unmapped += rest
        else:
            log.warning("follow-your-emoji convert: %s not found; %s keeps fresh weights", path, part)
        if part == "denoising_unet" and any(".motion_modules." in k and k not in state for k in expected):
            for name in MOTION_FILES:
                motion = next((os.path.join(b, name) for b in _bases(root) if os.path.isfile(os.path.join(b, name))),
                              None)
                if motion:
                    placed, _ = place(load_pickle(motion), expected, name, motion_key)
                    state.update({k: v for k, v in placed.items() if k not in state})
                    break
        absent = sorted(set(expected) - set(state))
        if absent:
            fresh = build_parts(config, only=(part,))[part].state_dict()
            state.update({k: fresh[k].contiguous() for k in absent})
            missing[part] = absent
        mapped += len(expected) - len(absent)
        write_part(os.path.join(dst, part), module, state)
    write_config(dst, config)
    write_index(dst, CLASS_NAME, PART_CLASSES)
    extras = convert_extras(root, dst, vae=config["latent"]["type"] == "vae")
    if unmapped:
        log.warning("follow-your-emoji convert: %d official tensors not placed (e.g. %s)", len(unmapped), unmapped[:3])
    for part, keys in missing.items():
        log.warning("follow-your-emoji convert: %d %s tensors had no official value and stay fresh (e.g. %s)",
                    len(keys), part, keys[:3])
    if config["latent"]["type"] == "vae" and not extras.get(VAE_FOLDER):
        log.warning("follow-your-emoji convert: no sd-vae-ft-mse/ next to %s; add vae/ before loading", root)
    return {"mapped": mapped, "unmapped": unmapped, "missing": missing, "extras": extras, "dst": dst}


__all__ = ["OFFICIAL_FILES", "convert", "convert_extras", "official_to_facefab"]

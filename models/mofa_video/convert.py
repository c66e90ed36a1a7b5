"""The released MOFA-Video checkpoints (MOFA-Video-Hybrid/ckpt_tree.md: ckpts/mofa/ldmk_controlnet/ or
traj_controlnet/, ckpts/mofa/stable-video-diffusion-img2vid-xt-1-1/, and the CMP checkpoint under
models/cmp/experiments/semiauto_annot/resnet50_vip+mpii_liteflow/checkpoints/) -> a facefab pipeline
folder (`facefab convert mofa-video SRC DST`).

- ldmk_controlnet/ (or traj_controlnet/): a diffusers folder of the official `FlowControlNet`
  (config.json + diffusion_pytorch_model.safetensors) -> controlnet/, every key by its own name (facefab's
  FlowControlNet has the official names and shapes; see controlnet.py). The variant is read off the keys:
  `controlnet_ldmk_embedding.*` (keypoint images), `occlusions.*` / `zero_outs.*` (ForegroundMatting),
  `flow_encoder.zeroconvs.*` (the trajectory controlnet's zero convs), and set in the written config.
- stable-video-diffusion-img2vid-xt-1-1/unet/ -> unet/ (diffusers' UNetSpatioTemporalConditionModel, the
  same names), vae/ -> vae/ (AutoencoderKLTemporalDecoder, copied), image_encoder/ -> image_encoder/ (CLIP
  ViT-H image encoder, copied; the config's image_encoder becomes "clip").
- the CMP checkpoint (a pickle, `state_dict` with DataParallel's `module.` prefix, read with
  weights_only=True) -> cmp/: the sparse-motion encoder (`flow_encoder.features.*`, the official ShallowNet)
  maps by name; the official ResNet-50 image encoder and skip-layer decoder are not facefab's (smaller)
  modules and are listed as not placed, so cmp/ keeps fresh weights there and must be trained (`facefab
  train mofa-video --system-options '{"train": ["cmp"], "init": DST}'`).

Every official tensor not placed is listed in the report and every facefab tensor no official one filled
keeps its fresh initialisation and is listed too (as the other converters).
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any

import torch

from ..shared.checkpoints import complete, load_pickle, place, weights_to_safetensors, write_part
from ..shared.pipeline_folder import write_config, write_index
from .config import check, official
from .pipeline import CLASS_NAME, IMAGE_ENCODER_FOLDER, VAE_FOLDER, build_parts, part_classes

log = logging.getLogger(__name__)

CONTROLNETS = ("ldmk_controlnet", "traj_controlnet")
SVD = "stable-video-diffusion-img2vid-xt-1-1"
CMP_GLOB = "**/ckpt_iter_*.pth.tar"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
           "diffusion_pytorch_model.bin")


def _bases(src: str) -> list[str]:
    return [src, os.path.join(src, "mofa"), os.path.join(src, "ckpts", "mofa"), os.path.join(src, "ckpts")]


def _find(src: str, names: tuple[str, ...]) -> str | None:
    for base in _bases(src):
        for name in names:
            if os.path.isfile(os.path.join(base, name, "config.json")):
                return os.path.join(base, name)
    return None


def _read_weights(folder: str) -> dict[str, torch.Tensor]:
    for name in WEIGHTS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path)
            return load_pickle(path)
    raise FileNotFoundError(f"{folder}: none of {WEIGHTS}")


def variant_of(keys) -> dict[str, Any]:
    """The adapter flags of an official FlowControlNet state dict's keys."""
    keys = list(keys)
    return {"landmarks": any(k.startswith("controlnet_ldmk_embedding.") for k in keys),
            "flow_zeroconv": any(k.startswith("flow_encoder.zeroconvs.") for k in keys),
            "occlusion": any(k.startswith("occlusions.") for k in keys)}


def convert(src: str, dst: str, config: dict | None = None) -> dict[str, Any]:
    """Write the facefab pipeline folder `dst` from the official checkpoints under `src` (see the module
    docstring); `config` defaults to `config.official()`. Returns the report: mapped (count), unmapped
    (official tensors not placed), missing (facefab tensors left fresh), extras, variant."""
    config = dict(config or official())
    controlnet_dir = _find(src, CONTROLNETS)
    if controlnet_dir is None:
        raise FileNotFoundError(f"{src}: no {' or '.join(CONTROLNETS)}/ (config.json + weights) there or in mofa/, "
                                "ckpts/mofa/ (the layout of the official ckpts/)")
    official_state = {"controlnet": _read_weights(controlnet_dir)}
    variant = variant_of(official_state["controlnet"])
    net = dict(config["controlnet"])
    net["landmarks"], net["flow_zeroconv"] = variant["landmarks"], variant["flow_zeroconv"]
    if not variant["occlusion"]:
        net["occlusion"] = None
    elif not net.get("occlusion"):
        net["occlusion"] = official()["controlnet"]["occlusion"]
    config["controlnet"] = net
    svd = next((os.path.join(b, SVD) for b in _bases(src) if os.path.isdir(os.path.join(b, SVD))), None)
    if svd and os.path.isdir(os.path.join(svd, "unet")):
        official_state["unet"] = _read_weights(os.path.join(svd, "unet"))
    cmp_files = sorted(glob.glob(os.path.join(src, CMP_GLOB), recursive=True))
    if cmp_files:
        official_state["cmp"] = load_pickle(cmp_files[-1])
    extras = {VAE_FOLDER: False, IMAGE_ENCODER_FOLDER: False}
    if svd:
        extras[VAE_FOLDER] = weights_to_safetensors(os.path.join(svd, "vae"), os.path.join(dst, VAE_FOLDER), WEIGHTS,
                                                    WEIGHTS[0]) if os.path.isdir(os.path.join(svd, "vae")) else False
        clip = os.path.join(svd, "image_encoder")
        if os.path.isfile(os.path.join(clip, "config.json")):
            extras[IMAGE_ENCODER_FOLDER] = weights_to_safetensors(
                clip, os.path.join(dst, IMAGE_ENCODER_FOLDER), ("model.safetensors", "model.fp16.safetensors",
                                                                "pytorch_model.bin"), "model.safetensors")
    if extras[IMAGE_ENCODER_FOLDER]:
        config["image_encoder"] = {"type": "clip"}
    check(config)

    from accelerate import init_empty_weights

    with init_empty_weights():
        empty = build_parts(config)
    mapped, unmapped, missing = 0, [], {}
    os.makedirs(dst, exist_ok=True)
    for part, module in empty.items():
        expected = {k: v.shape for k, v in module.state_dict().items()}
        state: dict[str, torch.Tensor] = {}
        if part in official_state:
            placed, rest = place(official_state[part], expected, part, lambda key: key.removeprefix("module."))
            state.update(placed)
            unmapped += rest
        else:
            log.warning("mofa-video convert: no official %s found under %s; it keeps fresh weights", part, src)
        absent = complete(state, expected, lambda part=part: build_parts(config, only=(part,))[part].state_dict())
        if absent:
            missing[part] = absent
        mapped += len(expected) - len(absent)
        write_part(os.path.join(dst, part), module, state)
    write_config(dst, config)
    write_index(dst, CLASS_NAME, part_classes(config))
    if unmapped:
        log.warning("mofa-video convert: %d official tensors not placed (e.g. %s)", len(unmapped), unmapped[:3])
    for part, keys in missing.items():
        log.warning("mofa-video convert: %d %s tensors had no official value and stay fresh (e.g. %s)", len(keys),
                    part, keys[:3])
    if config["latent"]["type"] == "vae" and not extras[VAE_FOLDER]:
        log.warning("mofa-video convert: no %s/vae next to %s; add vae/ before loading", SVD, controlnet_dir)
    return {"mapped": mapped, "unmapped": unmapped, "missing": missing, "extras": extras, "variant": variant,
            "dst": dst}


__all__ = ["CONTROLNETS", "SVD", "convert", "variant_of"]

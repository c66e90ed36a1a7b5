"""The released Hallo checkpoint (huggingface fudan-generative-ai/hallo: pretrained_models/hallo/net.pth,
next to sd-vae-ft-mse/ and wav2vec/wav2vec2-base-960h/) -> a facefab Hallo pipeline folder
(`facefab convert hallo`).

net.pth is a pickle of the official `Net` state dict: it is read with torch.load(weights_only=True)
(tensors only, no code) and written as safetensors. Its keys are `<part>.<name>` with the official part
names, which facefab's HalloNet keeps (reference_unet, denoising_unet, face_locator, imageproj,
audioproj). Key by key:

- reference_unet, face_locator, imageproj, audioproj: the same names as facefab's modules.
- denoising_unet, spatial layers (resnets, attentions, samplers, conv_in/out, time embedding): the same
  names (the official InflatedConv3d / InflatedGroupNorm / Transformer3DModel keep diffusers' names).
- denoising_unet, motion modules: AnimateDiff names -> diffusers' (shared with V-Express' converter:
  `temporal_transformer.` dropped, attention_blocks.0/1 -> attn1/2, norms.0/1 -> norm1/2, ff_norm -> norm3,
  each attention block's `pos_encoder.pe` -> the block's `pos_embed.pe`, the same sinusoid).
- denoising_unet, audio modules (`<block>.audio_modules.<i>.`): the same names. The official audio
  module (a Transformer3DModel: norm, proj_in, a block with attn1, attn2_0/1/2 for the full / face / lip
  regions, zero_conv_full/face/lip and ff, proj_out) is built as such by the "hallo" audio_block of
  the shared denoiser (shared.motion_unet.RegionAudioModule), with the official widths. With the
  "simple" block (a config without "audio_block") they are all reported as not placed.
- sd-vae-ft-mse/ -> vae/, wav2vec2-base-960h/ -> audio_encoder/ (as Wav2Vec2Model), when found.

The config is `config.official()`: the paper sizes with wav2vec2 speech features and the "hallo" audio
block. Every official tensor that is not placed (unknown name, other shape) is listed in the report, and every
facefab tensor no official one filled keeps its fresh initialisation and is listed too.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..shared.checkpoints import load_pickle as _load_pickle
from ..shared.checkpoints import weights_to_safetensors as _weights_to_safetensors
from ..shared.checkpoints import write_part as _write_part
from ..shared.pipeline_folder import write_config
from ..v_express.convert import _wav2vec2_key, official_to_facefab
from .config import check, official
from .net import PART_CLASSES, build_parts
from .pipeline import AUDIO_ENCODER_FOLDER, VAE_FOLDER, write_index

log = logging.getLogger(__name__)

NET_FILE = "net.pth"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def official_name(part: str, key: str, audio_block: str = "hallo") -> str | None:
    """The facefab name of an official `part` parameter (the motion modules renamed, the rest as is), or
    None for an audio module when the denoiser's audio block is not the official one (a few of the
    "simple" block's names, norm or proj_in.bias, would match without meaning the same)."""
    if part == "denoising_unet" and ".audio_modules." in f".{key}" and audio_block != "hallo":
        return None
    return official_to_facefab(part, key)


def _find_net(src: str) -> str:
    """net.pth: src itself, or in src, src/hallo or src/pretrained_models/hallo."""
    if os.path.isfile(src):
        return src
    for folder in (src, os.path.join(src, "hallo"), os.path.join(src, "pretrained_models", "hallo")):
        if os.path.isfile(os.path.join(folder, NET_FILE)):
            return os.path.join(folder, NET_FILE)
    raise FileNotFoundError(f"{src}: no {NET_FILE} there or in hallo/, pretrained_models/hallo/ "
                            "(the layout of huggingface fudan-generative-ai/hallo)")


def _empty_parts(config: dict) -> dict[str, torch.nn.Module]:
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build_parts(config)


def _copy_extras(net_path: str, dst: str) -> dict[str, bool]:
    """vae/ from sd-vae-ft-mse/, audio_encoder/ from wav2vec2-base-960h/ (or wav2vec/wav2vec2-base-960h/),
    looked for next to net.pth and one folder up (pretrained_models/)."""
    here = os.path.dirname(os.path.abspath(net_path))
    found = {VAE_FOLDER: False, AUDIO_ENCODER_FOLDER: False}
    for base in (here, os.path.dirname(here)):
        vae = os.path.join(base, "sd-vae-ft-mse")
        if not found[VAE_FOLDER] and os.path.isfile(os.path.join(vae, "config.json")):
            found[VAE_FOLDER] = _weights_to_safetensors(vae, os.path.join(dst, VAE_FOLDER),
                                                        (WEIGHTS_NAME, "diffusion_pytorch_model.bin"), WEIGHTS_NAME)
        for w2v in (os.path.join(base, "wav2vec2-base-960h"), os.path.join(base, "wav2vec", "wav2vec2-base-960h")):
            if not found[AUDIO_ENCODER_FOLDER] and os.path.isfile(os.path.join(w2v, "config.json")):
                found[AUDIO_ENCODER_FOLDER] = _weights_to_safetensors(
                    w2v, os.path.join(dst, AUDIO_ENCODER_FOLDER), ("model.safetensors", "pytorch_model.bin"),
                    "model.safetensors", _wav2vec2_key)
    return found


def convert(src: str, dst: str, config: dict | None = None) -> dict[str, Any]:
    """Write the facefab pipeline folder `dst` from the official checkpoint at `src` (see the module
    docstring); `config` defaults to `config.official()` (the released sizes). Returns the report:
    mapped (count of facefab tensors filled), unmapped (official tensors not placed), missing (facefab
    tensors left fresh, per part), extras (vae/, audio_encoder/ found)."""
    config = check(config or official())
    net_path = _find_net(src)
    official_state = _load_pickle(net_path)
    empty = _empty_parts(config)
    by_part: dict[str, dict[str, torch.Tensor]] = {part: {} for part in PART_CLASSES}
    unmapped: list[str] = []
    for key, tensor in official_state.items():
        part, _, rest = key.partition(".")
        if part in by_part and torch.is_tensor(tensor):
            by_part[part][rest] = tensor
        else:
            unmapped.append(key)

    mapped, missing = 0, {}
    os.makedirs(dst, exist_ok=True)
    for part, module in empty.items():
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        state: dict[str, torch.Tensor] = {}
        for key, tensor in by_part[part].items():
            ours = official_name(part, key, config.get("audio_block", "simple"))
            if ours in expected and expected[ours] == tuple(tensor.shape):
                state[ours] = tensor.detach().to(torch.float32).contiguous()
            else:
                unmapped.append(f"{part}.{key}")
        absent = sorted(set(expected) - set(state))
        if absent:
            fresh = build_parts(config, only=(part,))[part].state_dict()
            state.update({k: fresh[k].contiguous() for k in absent})
            missing[part] = absent
        mapped += len(expected) - len(absent)
        _write_part(os.path.join(dst, part), module, state)
    write_config(dst, config)
    write_index(dst, PART_CLASSES)
    extras = _copy_extras(net_path, dst)
    if unmapped:
        log.warning("hallo convert: %d official tensors not placed (e.g. %s)", len(unmapped), unmapped[:3])
    for part, keys in missing.items():
        log.warning("hallo convert: %d %s tensors had no official value and stay fresh (e.g. %s)", len(keys), part,
                    keys[:3])
    for folder, ok in extras.items():
        if not ok:
            log.warning("hallo convert: no %s source next to %s; add %s/ before loading", folder, net_path, folder)
    return {"mapped": mapped, "unmapped": unmapped, "missing": missing, "extras": extras, "dst": dst}


__all__ = ["convert", "official_name"]

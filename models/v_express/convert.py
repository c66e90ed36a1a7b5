"""The released V-Express checkpoint (huggingface tk93/V-Express: model_ckpts/v-express/*.bin, next to
sd-vae-ft-mse/ and wav2vec2-base-960h/) -> a facefab V-Express pipeline folder (`facefab convert v-express`).

The .bin files are pickles: they are read with torch.load(weights_only=True) (tensors only, no code) and
written as safetensors. Key by key:

- reference_net.bin, v_kps_guider.bin, audio_projection.bin: the same names as facefab's modules.
- denoising_unet.bin: the same names, the official separate reference attention of every spatial
  transformer block (`attn1_5`, `norm1_5`) included: the config's reference_attention "separate" (the
  official's, `config.official()`) builds those modules in the denoiser (shared.reference_attention).
- motion_module.bin (and any motion keys in denoising_unet.bin): AnimateDiff names -> diffusers'
  (`temporal_transformer.` dropped; attention_blocks.0/1 -> attn1/2, norms.0/1 -> norm1/2, ff_norm -> norm3,
  each attention block's `pos_encoder.pe` -> the block's `pos_embed.pe`, the same sinusoid).
- sd-vae-ft-mse/ -> vae/ and wav2vec2-base-960h/ -> audio_encoder/ (as Wav2Vec2Model), when present and
  the config uses them (the released one does both).

Every official tensor that is not placed (unknown name or other shape) is listed in the report, and
every facefab tensor no official one filled keeps its fresh initialisation and is listed too.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import torch

from ..shared.checkpoints import WEIGHTS_NAME, load_pickle, motion_key, place, weights_to_safetensors, write_part
from ..shared.pipeline_folder import write_config, write_index
from .config import check, official
from .pipeline import AUDIO_ENCODER_FOLDER, PART_CLASSES, VAE_FOLDER, build_parts

log = logging.getLogger(__name__)

OFFICIAL_FILES = {"reference_net": "reference_net.bin", "denoising_unet": "denoising_unet.bin",
                  "v_kps_guider": "v_kps_guider.bin", "audio_projection": "audio_projection.bin"}
MOTION_FILE = "motion_module.bin"


def official_to_facefab(part: str, key: str) -> str:
    """The facefab name of an official parameter of `part` (the same name where nothing differs)."""
    return motion_key(key) if part == "denoising_unet" else key


def _find_official(src: str) -> str:
    """The folder holding the official *.bin files: src itself, src/v-express or src/model_ckpts/v-express."""
    for folder in (src, os.path.join(src, "v-express"), os.path.join(src, "model_ckpts", "v-express")):
        if os.path.isfile(os.path.join(folder, OFFICIAL_FILES["denoising_unet"])):
            return folder
    raise FileNotFoundError(f"{src}: no {OFFICIAL_FILES['denoising_unet']} there or in v-express/, "
                            "model_ckpts/v-express/ (the layout of huggingface tk93/V-Express)")


def _empty_parts(config: dict) -> dict[str, torch.nn.Module]:
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build_parts(config)


def _place(part: str, official_state: dict[str, torch.Tensor], expected: dict[str, torch.Size],
           source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    return place(official_state, expected, source, lambda key: official_to_facefab(part, key))


def _fresh_values(part: str, config: dict, keys: list[str]) -> dict[str, torch.Tensor]:
    state = build_parts(config, only=(part,))[part].state_dict()
    return {k: state[k].contiguous() for k in keys}


def _wav2vec2_key(key: str) -> str | None:
    """wav2vec2-base-960h is a Wav2Vec2ForCTC checkpoint: its encoder without the CTC head."""
    if key.startswith("lm_head."):
        return None
    return re.sub(r"^wav2vec2\.", "", key)


def convert_extras(root: str, dst: str, vae: bool = True, audio_encoder: bool = True) -> dict[str, bool]:
    """vae/ from sd-vae-ft-mse/ and audio_encoder/ from wav2vec2-base-960h/ (as a Wav2Vec2Model), looked
    for in `root` and next to it (the official model_ckpts/ layout); whether each was written."""
    wanted = {VAE_FOLDER: ("sd-vae-ft-mse", (WEIGHTS_NAME, "diffusion_pytorch_model.bin"), WEIGHTS_NAME, None),
              AUDIO_ENCODER_FOLDER: ("wav2vec2-base-960h", ("model.safetensors", "pytorch_model.bin"),
                                     "model.safetensors", _wav2vec2_key)}
    wanted = {k: v for k, v in wanted.items() if (vae if k == VAE_FOLDER else audio_encoder)}
    found = dict.fromkeys(wanted, False)
    for base in (root, os.path.dirname(root.rstrip("/"))):
        for folder, (name, sources, out_name, rename) in wanted.items():
            src = os.path.join(base, name)
            if not found[folder] and os.path.isfile(os.path.join(src, "config.json")):
                found[folder] = weights_to_safetensors(src, os.path.join(dst, folder), sources, out_name,
                                                        rename or (lambda k: k))
    return found


def convert(src: str, dst: str, config: dict | None = None) -> dict[str, Any]:
    """Write the facefab pipeline folder `dst` from the official checkpoint under `src` (see the module
    docstring); `config` defaults to `config.official()` (the released sizes). Returns the report:
    mapped (count), unmapped (official tensors not placed), missing (facefab tensors left fresh), extras."""
    config = check(config or official())
    root = _find_official(src)
    empty = _empty_parts(config)
    mapped, unmapped, missing = 0, [], {}
    os.makedirs(dst, exist_ok=True)
    for part, module in empty.items():
        expected = {k: v.shape for k, v in module.state_dict().items()}
        sources = [OFFICIAL_FILES[part]] + ([MOTION_FILE] if part == "denoising_unet" else [])
        state: dict[str, torch.Tensor] = {}
        for name in sources:
            path = os.path.join(root, name)
            if not os.path.isfile(path):
                log.warning("v-express convert: %s not found; %s keeps fresh weights there", path, part)
                continue
            placed, rest = _place(part, load_pickle(path), expected, name)
            state.update(placed)
            unmapped += rest
        absent = sorted(set(expected) - set(state))
        if absent:
            state.update(_fresh_values(part, config, absent))
            missing[part] = absent
        mapped += len(expected) - len(absent)
        write_part(os.path.join(dst, part), module, state)
    write_config(dst, config)
    extras = convert_extras(root, dst, vae=config["latent"]["type"] == "vae",
                            audio_encoder=config["audio"]["features"] == "wav2vec2")
    write_index(dst, "VExpressPipeline", PART_CLASSES)
    if unmapped:
        log.warning("v-express convert: %d official tensors not placed (e.g. %s)", len(unmapped), unmapped[:3])
    for part, keys in missing.items():
        log.warning("v-express convert: %d %s tensors had no official value and stay fresh (e.g. %s)", len(keys),
                    part, keys[:3])
    for folder, ok in extras.items():
        if not ok:
            log.warning("v-express convert: no %s source next to %s; add %s/ before loading", folder, root, folder)
    return {"mapped": mapped, "unmapped": unmapped, "missing": missing, "extras": extras, "dst": dst}


__all__ = ["convert", "convert_extras", "official_to_facefab"]

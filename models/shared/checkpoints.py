"""Helpers of the released-checkpoint converters of the diffusion systems (V-Express, Follow-Your-Emoji,
MegActor): tensors-only pickle reading, AnimateDiff motion-module names -> diffusers' UNetMotionModel names,
placing official tensors by name and shape, completing a part with fresh tensors, and writing a part / a
copied sub-model as safetensors."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import torch
from safetensors.torch import save_file

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# AnimateDiff's motion-module names -> diffusers' (`temporal_transformer.` dropped; attention_blocks.0/1 ->
# attn1/2, norms.0/1 -> norm1/2, ff_norm -> norm3, each block's `pos_encoder.pe` -> the block's `pos_embed.pe`)
MOTION_RENAMES = ((".temporal_transformer.", "."), (".attention_blocks.0.pos_encoder.", ".pos_embed."),
                  (".attention_blocks.1.pos_encoder.", ".pos_embed."), (".attention_blocks.0.", ".attn1."),
                  (".attention_blocks.1.", ".attn2."), (".norms.0.", ".norm1."), (".norms.1.", ".norm2."),
                  (".ff_norm.", ".norm3."))


def motion_key(key: str) -> str:
    """An official (AnimateDiff) UNet key -> the diffusers UNetMotionModel key (non-motion keys unchanged)."""
    if ".motion_modules." in f".{key}":
        for old, new in MOTION_RENAMES:
            key = key.replace(old, new)
    return key


_TO_ANIMATEDIFF = ((".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."), (".norm1.", ".norms.0."),
                   (".norm2.", ".norms.1."), (".norm3.", ".ff_norm."))


def animatediff_keys(key: str) -> list[str]:
    """The inverse of motion_key: the official (AnimateDiff) names of one facefab motion-module key (a
    block's `pos_embed.pe` is each of its two attention blocks' `pos_encoder.pe`); other keys as they are.
    For writing official-layout test checkpoints."""
    if ".motion_modules." not in f".{key}":
        return [key]
    head, _, rest = key.partition(".motion_modules.")
    index, _, rest = rest.partition(".")
    rest = "." + rest
    for ours, theirs in _TO_ANIMATEDIFF:
        rest = rest.replace(ours, theirs)
    name = f"{head}.motion_modules.{index}.temporal_transformer{rest}"
    if name.endswith("pos_embed.pe"):
        return [name.replace("pos_embed.pe", f"attention_blocks.{block}.pos_encoder.pe") for block in (0, 1)]
    return [name]


def load_pickle(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a .bin / .pth / .ckpt (torch.load weights_only: no code runs); a "state_dict" entry
    is unwrapped."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def place(official_state: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str,
          rename: Callable[[str], str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the official tensors whose renamed key and shape are in `expected`, "source:key" of the others)."""
    placed, unmapped = {}, []
    for key, tensor in official_state.items():
        if not torch.is_tensor(tensor):
            unmapped.append(f"{source}:{key}")
            continue
        ours = rename(key)
        if ours in expected and tuple(expected[ours]) == tuple(tensor.shape):
            placed[ours] = tensor.detach().contiguous()  # the released dtype (load_model casts)
        else:
            unmapped.append(f"{source}:{key}")
    return placed, unmapped


def complete(state: dict[str, torch.Tensor], expected: dict[str, torch.Size],
             fresh: Callable[[], dict[str, torch.Tensor]]) -> list[str]:
    """Fill the keys of `expected` that `state` lacks from `fresh()` (a freshly built part's state dict, made
    only when something is missing); returns those keys, sorted (the report's "missing")."""
    absent = sorted(set(expected) - set(state))
    if absent:
        new = fresh()
        state.update({k: new[k].contiguous() for k in absent})
    return absent


def write_part(folder: str, module, state: dict[str, torch.Tensor]) -> None:
    """A save_pretrained-style folder: the module's config.json and `state` as safetensors."""
    os.makedirs(folder, exist_ok=True)
    module.save_config(folder)
    save_file(state, os.path.join(folder, WEIGHTS_NAME))


def weights_to_safetensors(src_dir: str, dst_dir: str, names: tuple[str, ...], out_name: str,
                           rename: Callable[[str], str | None] = lambda k: k) -> bool:
    """Copy config.json and the first weights file found in `src_dir` into `dst_dir` as `out_name`
    (safetensors copied, pickles read tensors-only and re-written); False when there are none."""
    for name in names:
        path = os.path.join(src_dir, name)
        if not os.path.isfile(path):
            continue
        os.makedirs(dst_dir, exist_ok=True)
        shutil.copyfile(os.path.join(src_dir, "config.json"), os.path.join(dst_dir, "config.json"))
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = load_pickle(path)
        state = {rename(k): v.contiguous() for k, v in state.items() if rename(k) is not None}
        save_file(state, os.path.join(dst_dir, out_name))
        return True
    return False


__all__ = ["MOTION_RENAMES", "WEIGHTS_NAME", "animatediff_keys", "complete", "load_pickle", "motion_key", "place",
           "weights_to_safetensors", "write_part"]

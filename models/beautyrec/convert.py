"""The released BeautyREC weights (learningyan/BeautyREC: checkpoints/BeautyREC.pt) -> a facefab pipeline
folder (`facefab convert beautyrec SRC DST`).

The official code saves {"cleaner": the network's state dict, "optimizer", "scheduler", "epoch"} (mscv's
save_checkpoint; utils/update_checkpoint.py wraps a bare state dict the same way). BeautyRECNet keeps the
official module names, so the tensors of `cleaner` (a bare state dict and DataParallel's `module.` prefix
are taken too) are placed by name and shape; read with torch.load(weights_only=True) (tensors only, no code)
and written as safetensors. The config is read off the tensors (channels, residual blocks); the official
model is 256 px with 8 attention heads. Official tensors not placed and facefab tensors left fresh are
listed in the report.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import Any

import torch

from ..shared.checkpoints import complete, load_pickle, place, write_part
from ..shared.pipeline_folder import write_index
from .model import BeautyRECNet

log = logging.getLogger(__name__)

OFFICIAL_FILE = "BeautyREC.pt"


def find_checkpoint(src: str) -> str:
    """`src` itself, or BeautyREC.pt (else the only *.pt / *.pth) in `src` or src/checkpoints/."""
    if os.path.isfile(src):
        return src
    for folder in (src, os.path.join(src, "checkpoints")):
        if os.path.isfile(os.path.join(folder, OFFICIAL_FILE)):
            return os.path.join(folder, OFFICIAL_FILE)
        found = sorted(glob.glob(os.path.join(folder, "*.pt")) + glob.glob(os.path.join(folder, "*.pth")))
        if len(found) == 1:
            return found[0]
    raise FileNotFoundError(f"no {OFFICIAL_FILE} under {src} (or its checkpoints/)")


def network_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's tensors of an official checkpoint: its `cleaner` entry (or the file itself when it is a
    bare state dict), DataParallel's `module.` prefix removed."""
    state = checkpoint.get("cleaner", checkpoint)
    return {key.removeprefix("module."): value for key, value in state.items()}


def official_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """BeautyRECNet kwargs matching an official state dict's shapes (256 px, 8 heads: not in the shapes)."""
    dim = int(state["content_encoder.conv_first.conv.weight"].shape[0])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"content_encoder\.resblocks\.model\.(\d+)\.", k))}
    return {"image_size": 256, "dim": dim, "style_dim": int(state["style_encoder.style.weight"].shape[0]),
            "n_res": len(blocks), "n_head": 8}


def convert(src: str, dst: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the pipeline folder `dst` from the official checkpoint at `src` (see the module docstring);
    `config` overrides what is read off the tensors. Returns the report: mapped (count), unmapped (official
    tensors not placed), missing (facefab tensors left fresh), config, dst."""
    from .pipeline import BeautyRECPipeline

    path = find_checkpoint(src)
    official = network_state(load_pickle(path))
    config = {**official_config(official), **(config or {})}
    net = BeautyRECNet(**config)
    expected = {k: v.shape for k, v in net.state_dict().items()}
    state, unmapped = place(official, expected, os.path.basename(path), lambda k: k)
    missing = complete(state, expected, net.state_dict)
    write_part(dst, net, state)
    write_index(dst, BeautyRECPipeline.__name__, {})
    if unmapped or missing:
        log.warning("beautyrec convert: %d official tensors not placed (e.g. %s); %d left fresh (e.g. %s)",
                    len(unmapped), unmapped[:3], len(missing), missing[:3])
    return {"mapped": len(expected) - len(missing), "unmapped": unmapped, "missing": missing, "config": config,
            "dst": dst}


__all__ = ["convert", "find_checkpoint", "network_state", "official_config"]

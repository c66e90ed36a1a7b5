"""The one weights loader and device/precision choice for every generator model.

- Weights: `resolve_checkpoint` turns a local folder or a remote folder URI (s3://, gs://, ...) into a
  local folder (remote ones are downloaded once per machine into a content-keyed cache, atomically);
  `load_model` loads a diffusers-style `ModelMixin` folder (config.json + *.safetensors) from it.
  Pickled weights (.bin/.pt/.pth/.ckpt/.pkl) are never loaded: unpickling runs code, and checkpoints
  come from shared storage. A folder that only has pickled weights is refused with a clear error.
- Device and precision: `pick_device` ("auto": CUDA when visible, else CPU) and `pick_dtype`
  ("auto": bf16 on CUDA when supported, else fp16; fp32 on CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facefab.manifests.storage import is_local, local_path_of, open_fs

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/facefab/checkpoints"
ENV_CACHE_DIR = "FACEFAB_CHECKPOINT_CACHE"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFE_SUFFIX = ".safetensors"
_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "half": "float16",
           "bf16": "bfloat16", "bfloat16": "bfloat16"}


class CheckpointError(ValueError):
    """A checkpoint folder is missing, empty, or holds only weights we refuse to load."""


# -- device and precision -------------------------------------------------------------------------

def pick_device(pref: str = "auto"):
    """torch.device for "auto" (cuda if visible, else cpu), "cpu", "cuda" or "cuda:N"."""
    import torch

    pref = (pref or "auto").lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {pref!r} requested but no CUDA GPU is visible to this worker "
                           "(use device='auto' to fall back to the CPU)")
    return device


def pick_dtype(pref: str = "auto", device=None):
    """torch dtype for "auto" (bf16 on CUDA when supported, else fp16; fp32 on CPU) or a name
    (fp32/float32, fp16/float16, bf16/bfloat16)."""
    import torch

    pref = (pref or "auto").lower()
    if pref == "auto":
        device = torch.device(device) if device is not None else pick_device("auto")
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if pref not in _DTYPES:
        raise ValueError(f"unknown dtype {pref!r}; use auto, {', '.join(sorted(_DTYPES))}")
    return getattr(torch, _DTYPES[pref])


# -- checkpoints -------------------------------------------------------------------------------------

def check_weight_files(names: Sequence[str], where: str) -> None:
    """Refuse a folder whose weights are all pickles (or that has no weights at all)."""
    safe = [n for n in names if n.endswith(SAFE_SUFFIX)]
    pickled = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if safe:
        return
    if pickled:
        raise CheckpointError(
            f"{where} only has pickled weights ({', '.join(sorted(pickled)[:5])}); facefab loads "
            "safetensors only, because unpickling runs arbitrary code. Convert them once on a trusted "
            "machine (load, then model.save_pretrained(folder, safe_serialization=True)).")
    raise CheckpointError(f"{where} has no *.safetensors weights")


def _cache_key(uri: str, storage_options: dict[str, Any] | None, listing: list[tuple]) -> str:
    # The listing (names, sizes, ETags) is in the key: a retrained checkpoint at the same URI is a new entry.
    endpoint = ((storage_options or {}).get("client_kwargs") or {}).get("endpoint_url", "")
    blob = json.dumps([uri.rstrip("/"), endpoint, listing], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def resolve_checkpoint(uri: str, storage_options: dict[str, Any] | None = None,
                       cache_dir: str | None = None) -> str:
    """A local folder holding the checkpoint at `uri`.

    Local paths (and file:// URLs) are returned as they are. A remote folder is downloaded once into
    `cache_dir` (default $FACEFAB_CHECKPOINT_CACHE or ~/.cache/facefab/checkpoints)/<hash>, where
    the hash covers the URI and the remote listing (so retrained weights are fetched again). The
    download goes to a hidden temp folder that is renamed into place when complete: a crashed or
    concurrent download never leaves a half-written entry. Pickled weight files are not downloaded.
    """
    if not uri:
        raise CheckpointError("no checkpoint given")
    if is_local(uri):
        path = os.path.abspath(os.path.expanduser(local_path_of(uri)))
        if not os.path.isdir(path):
            raise CheckpointError(f"checkpoint folder not found: {uri}")
        return path
    fs, root = open_fs(uri, storage_options)
    root = root.rstrip("/")
    try:
        entries = fs.find(root, detail=True)
    except FileNotFoundError:
        entries = {}
    files = {posixpath.relpath(p, root): info for p, info in entries.items() if info.get("type") != "directory"}
    if not files:
        raise CheckpointError(f"checkpoint folder {uri} is empty or missing")
    check_weight_files(list(files), f"checkpoint {uri}")
    wanted = sorted(rel for rel in files if not rel.lower().endswith(PICKLE_SUFFIXES))
    listing = [(rel, files[rel].get("size"), files[rel].get("ETag") or files[rel].get("mtime")) for rel in wanted]
    base = Path(cache_dir or os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR).expanduser()
    target = base / _cache_key(uri, storage_options, listing)
    if target.is_dir():
        return str(target)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=base))
    try:
        for rel in wanted:
            local = staging / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root}/{rel}", str(local))
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # only a concurrent download that finished first is fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("downloaded checkpoint %s -> %s", uri, target)
    return str(target)


def load_model(cls, uri: str, storage_options: dict[str, Any] | None = None, device: Any = "auto",
               dtype: Any = "auto", *, subfolder: str | None = None, cache_dir: str | None = None):
    """`cls.from_pretrained` on the (resolved) checkpoint folder, safetensors only, in eval mode on
    `device` with `dtype` (names as in pick_device / pick_dtype, or torch objects)."""
    import torch

    local = resolve_checkpoint(uri, storage_options, cache_dir)
    folder = os.path.join(local, subfolder) if subfolder else local
    where = f"checkpoint {uri}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise CheckpointError(f"{where} has no config.json: expected a save_pretrained folder of {cls.__name__}")
    check_weight_files(os.listdir(folder), where)
    device = device if isinstance(device, torch.device) else pick_device(device)
    dtype = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, device)
    # the dtype at load (diffusers' way), not a cast after it: keeps modules a model pins to float32 there
    model = cls.from_pretrained(folder, use_safetensors=True, local_files_only=True, torch_dtype=dtype)
    return model.to(device=device).eval()

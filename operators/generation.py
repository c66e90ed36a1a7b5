"""The generation runtime: what every generator operator shares.

- Weights: `resolve_checkpoint` turns a local folder or a remote folder URI (s3://, gs://, ...) into a
  local folder (remote ones are downloaded once per machine into a content-keyed cache, atomically);
  `load_model` loads a diffusers-style `ModelMixin` folder (config.json + *.safetensors) from it.
  Pickled weights (.bin/.pt/.pth/.ckpt/.pkl) are never loaded: unpickling runs code, and checkpoints
  come from shared storage. A folder that only has pickled weights is refused with a clear error.
- Device and precision: `pick_device` ("auto": CUDA when visible, else CPU) and `pick_dtype`
  ("auto": bf16 on CUDA when supported, else fp16; fp32 on CPU).
- Time: `window_spans` cuts T frames into overlapping windows; `blend_windows` joins per-window
  outputs with a linear cross-fade over each overlap, so there is no seam where windows meet.
- `GeneratorOperator`: the operator base (actor pool, one GPU per actor when the cluster has GPUs)
  that loads its model once per actor in `setup()` and pastes generated crops back into frames.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import posixpath
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from facefab.manifests.storage import is_local, local_path_of, open_fs
from facefab.operators.base import Operator, OperatorError, Resources

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/facefab/checkpoints"
ENV_CACHE_DIR = "FACEFAB_CHECKPOINT_CACHE"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFE_SUFFIX = ".safetensors"
_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "half": "float16",
           "bf16": "bfloat16", "bfloat16": "bfloat16"}


class CheckpointError(OperatorError, ValueError):
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
    model = cls.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    return model.to(device=device, dtype=dtype).eval()


# -- temporal windows --------------------------------------------------------------------------------

def window_spans(n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) spans of length `window` covering range(n), consecutive ones sharing at least
    `overlap` frames: the fewest windows that do, spread evenly from 0 to n (so the extra overlap is
    shared out instead of piling up at the end). n <= window gives one span (0, n)."""
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got overlap={overlap}, window={window}")
    if n <= window:
        return [(0, n)] if n > 0 else []
    count = math.ceil((n - overlap) / (window - overlap))
    starts = np.round(np.linspace(0, n - window, count)).astype(int)
    return [(int(s), int(s) + window) for s in starts]


def blend_windows(n: int, spans: Sequence[tuple[int, int]], outputs: Sequence[Any]) -> np.ndarray:
    """Join per-span outputs ((end-start, ...) arrays) into one (n, ...) array.

    Each span's frames are weighted by a triangle over the span (k + 0.5 frames from its nearer end)
    and every frame is normalised by its total weight. Where two spans share m frames their weights
    sum to m, so the result is a linear cross-fade over the shared frames, no jump at window
    boundaries; frames covered by a single span are that span's output.
    """
    if len(spans) != len(outputs):
        raise ValueError(f"{len(spans)} spans but {len(outputs)} outputs")
    if not spans:
        raise ValueError("nothing to blend")
    outputs = [np.asarray(o) for o in outputs]
    acc = np.zeros((n, *outputs[0].shape[1:]), np.float64)
    total = np.zeros(n, np.float64)
    for i, ((start, end), out) in enumerate(zip(spans, outputs)):
        if out.shape[0] != end - start:
            raise ValueError(f"output {i} has {out.shape[0]} frames for span [{start}, {end})")
        k = np.arange(end - start)
        w = np.minimum(k + 0.5, end - start - k - 0.5)
        acc[start:end] += w.reshape(-1, *([1] * (out.ndim - 1))) * out
        total[start:end] += w
    if np.any(total == 0):
        raise ValueError(f"spans do not cover all {n} frames")
    return (acc / total.reshape(-1, *([1] * (acc.ndim - 1)))).astype(np.result_type(outputs[0].dtype, np.float32))


# -- the operator base ---------------------------------------------------------------------------------

class GeneratorOperator(Operator):
    """Base of generator operators: an actor per model replica, weights loaded once in `setup()`.

    Subclasses set `model_name` (the registry name) and implement `load(checkpoint_dir_or_uri)`
    returning the ready model (use `self.device`, `self.dtype`, `load_model`), plus `process_row`.
    The checkpoint comes from `Config.checkpoint`, else $FACEFAB_CHECKPOINT_<NAME>; without one,
    `load_default()` gives the weight-free default, or the row fails with a clear error.
    """

    stateful = True
    model_name: ClassVar[str] = ""
    default_resources = Resources(num_cpus=0.5, num_gpus=1.0)  # GPUs only requested when the cluster has them

    @dataclass
    class Config:
        checkpoint: str | None = None  # local folder or s3://... of a save_pretrained checkpoint
        dtype: str = "auto"  # auto: bf16 (fp16 without bf16 support) on CUDA, fp32 on CPU
        device: str = "auto"  # auto: the actor's GPU when it has one, else CPU
        window: int = 50  # frames per temporal window
        overlap: int = 10  # frames shared by consecutive windows, cross-faded
        cache_dir: str | None = None  # download cache for remote checkpoints

    def setup(self) -> None:
        self.device = pick_device(self.config.device)
        self.dtype = pick_dtype(self.config.dtype, self.device)
        window_spans(self.config.window + 1, self.config.window, self.config.overlap)  # validate early
        checkpoint = self.checkpoint_uri()
        self.model = self.load(checkpoint) if checkpoint else self.load_default()

    def checkpoint_uri(self) -> str | None:
        from facefab.operators.registry import checkpoint_for

        return self.config.checkpoint or (checkpoint_for(self.model_name) if self.model_name else None)

    def load(self, checkpoint: str) -> Any:
        raise NotImplementedError

    def load_default(self) -> Any:
        from facefab.operators.registry import env_var

        raise OperatorError(f"{self.name}: no checkpoint configured (set {type(self).__name__}.Config.checkpoint "
                            f"or ${env_var(self.model_name)}) and {self.model_name} has no weight-free default")

    @staticmethod
    def paste_crops(frames: np.ndarray, crops: np.ndarray, inverse: np.ndarray,
                    masks: np.ndarray | None = None) -> np.ndarray:
        """Paste aligned crops (T,S,S,3) back into frames (T,H,W,3) through the crop->frame affines
        (T,2,3) from preprocessing; `masks` (T,S,S) in [0,1] limit the pasted area (default: the
        whole crop, feathered)."""
        from facefab.operators.align import paste_back

        if not len(frames) == len(crops) == len(inverse):
            raise ValueError(f"{len(frames)} frames, {len(crops)} crops, {len(inverse)} transforms")
        out = np.empty_like(frames)
        for t in range(len(frames)):
            out[t] = paste_back(frames[t], crops[t], inverse[t], None if masks is None else masks[t])
        return out


__all__ = [
    "CheckpointError",
    "GeneratorOperator",
    "blend_windows",
    "check_weight_files",
    "load_model",
    "pick_device",
    "pick_dtype",
    "resolve_checkpoint",
    "window_spans",
]

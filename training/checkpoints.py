"""Checkpoints: where Ray Train keeps them, what one holds, and weights from an export folder.

CKPT_ROOT/<run_name>/ (local or any fsspec URI, e.g. s3:// with an endpoint):

    checkpoint_00000200/            one per checkpoint_every steps (newest num_to_keep kept)
        deepspeed/                  engine.save_checkpoint: mp_rank_00_model_states.pt (parameter
                                    names prefixed "model.": the engine wraps model + loss) and one
                                    zero_pp_rank_<r>_mp_rank_00_optim_states.pt per rank
                                    (strategy "ddp": model.pt + optimizer.pt from rank 0 instead)
        trainer_state.json          step, epoch, loss history, evals, runs so far
    checkpoint_manager_snapshot.json   Ray Train's record of the registered checkpoints

Ray Train uploads each folder a worker reports and hands the latest one back to every worker of a
rerun (`ray.train.get_checkpoint()`): that is the resume. Nothing in a checkpoint is unpickled:
every .pt file is first scanned for the globals it would import (no code runs) and refused unless
all are on SAFE_GLOBALS, then loaded with `torch.load(weights_only=True)`, DeepSpeed's own loads
included (`SafeCheckpointEngine`). A checkpoint that is refused or fails to load is skipped with a
warning and the previous intact one is used (`restore_latest_intact`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any

from facefab.manifests.storage import is_local, local_path_of, open_fs

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"
STATE_FILE = "trainer_state.json"
DS_TAG = "deepspeed"


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def ray_storage(ckpt_root: str, storage_options: dict | None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: a local folder, or any fsspec store."""
    if is_local(ckpt_root):
        path = os.path.abspath(local_path_of(ckpt_root))
        os.makedirs(path, exist_ok=True)
        return path, None
    import pyarrow.fs as pafs

    opts = dict(storage_options or {})
    if ckpt_root.startswith(("s3://", "s3a://")):
        # Ray lists and re-reads what other processes wrote: no stale listing cache
        opts.update(skip_instance_cache=True, use_listings_cache=False)
    fs, path = open_fs(ckpt_root, opts)
    return path.rstrip("/"), pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def save_model_state(folder: str, step: int, engine, module, optimizer, rank: int) -> None:
    """The model and optimizer state into a checkpoint folder: every rank's DeepSpeed shards, or
    (no engine: DDP) rank 0's model.pt + optimizer.pt."""
    if engine is not None:
        engine.save_checkpoint(folder, tag=DS_TAG, client_state={"step": step})
    elif rank == 0:
        import torch

        torch.save(module.state_dict(), os.path.join(folder, "model.pt"))
        torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))


def write_trainer_state(folder: str, state: dict[str, Any]) -> None:
    with open(os.path.join(folder, STATE_FILE), "w") as f:
        json.dump(state, f)


# The only classes a DeepSpeed ZeRO-1/2 checkpoint names besides tensors and plain containers
# (found with torch.serialization.get_unsafe_globals_in_checkpoint on facefab's own checkpoints).
SAFE_GLOBAL_NAMES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint file would import something other than SAFE_GLOBALS when unpickled."""


def safe_globals() -> list:
    import importlib

    out = []
    for name in SAFE_GLOBAL_NAMES:
        module, attr = name.rsplit(".", 1)
        out.append(getattr(importlib.import_module(module), attr))
    return out


def check_pickles(folder: str) -> None:
    """Refuse a checkpoint folder any of whose .pt files names a global outside SAFE_GLOBAL_NAMES
    (read from the pickle opcodes; nothing is executed)."""
    import torch

    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.endswith((".pt", ".pth", ".bin", ".pkl")):
                path = os.path.join(dirpath, name)
                try:
                    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
                except Exception as exc:  # noqa: BLE001 - unreadable: corrupt, refused the same way
                    raise UnsafeCheckpoint(f"{path}: not a readable torch checkpoint ({exc})") from None
                unsafe = sorted(set(names) - set(SAFE_GLOBAL_NAMES))
                if unsafe:
                    raise UnsafeCheckpoint(f"{path} would import {unsafe} when loaded; refusing to unpickle it")


def safe_torch_load(path: str, map_location=None):
    import torch

    with torch.serialization.safe_globals(safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def use_safe_loading(engine) -> None:
    """Make a DeepSpeed engine load its checkpoints with weights_only=True (its default unpickles)."""
    engine.checkpoint_engine.load = lambda path, map_location=None: safe_torch_load(path, map_location)


def restore_latest_intact(checkpoint, engine, module, optimizer, device) -> tuple[dict[str, Any], Any]:
    """`restore` from Ray Train's latest checkpoint, or, when it is corrupt or refused, from the newest
    older checkpoint of the same run that loads; (trainer state, the checkpoint used)."""
    candidates = [checkpoint, *_older_checkpoints(checkpoint)]
    errors = []
    for candidate in candidates:
        try:
            return restore(candidate, engine, module, optimizer, device), candidate
        except Exception as exc:  # noqa: BLE001 - try the previous one; all errors are reported below
            log.warning("checkpoint %s cannot be restored (%s: %s); trying the previous one",
                        candidate.path, type(exc).__name__, exc)
            errors.append(f"{candidate.path}: {type(exc).__name__}: {exc}")
    raise RuntimeError("no intact checkpoint to resume from:\n  " + "\n  ".join(errors))


def _older_checkpoints(checkpoint) -> list:
    from ray.train import Checkpoint

    fs = checkpoint.filesystem
    parent, name = checkpoint.path.rstrip("/").rsplit("/", 1)
    try:
        from pyarrow.fs import FileSelector

        entries = fs.get_file_info(FileSelector(parent))
    except OSError:
        return []
    older = sorted((e.path for e in entries if e.base_name.startswith(CHECKPOINT_PREFIX) and e.base_name < name),
                   reverse=True)
    return [Checkpoint(path=path, filesystem=fs) for path in older]


def restore(checkpoint, engine, module, optimizer, device) -> dict[str, Any]:
    """Load a Ray Train checkpoint's model + optimizer state in place; returns its trainer state."""
    with checkpoint.as_directory() as folder:
        check_pickles(folder)
        if engine is not None:
            use_safe_loading(engine)
            path, _ = engine.load_checkpoint(folder, tag=DS_TAG)
            if path is None:
                raise RuntimeError(f"checkpoint {checkpoint.path} has no DeepSpeed state under {DS_TAG}/")
        else:

            module.load_state_dict(safe_torch_load(os.path.join(folder, "model.pt"), map_location=device))
            optimizer.load_state_dict(safe_torch_load(os.path.join(folder, "optimizer.pt"), map_location=device))
        with open(os.path.join(folder, STATE_FILE)) as f:
            return json.load(f)


def _download_dir(uri: str, storage_options: dict | None) -> tuple[str, bool]:
    """Local folder with the contents of `uri` (and whether it is a temp copy)."""
    if is_local(uri):
        return local_path_of(uri), False
    fs, path = open_fs(uri, storage_options)
    tmp = tempfile.mkdtemp(prefix="facefab-init-")
    fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
    return tmp, True


def load_weights(model, uri: str, storage_options: dict | None) -> None:
    """Initialise `model` from the *.safetensors of an export folder (missing keys stay fresh)."""
    from safetensors.torch import load_file

    local, temp = _download_dir(uri, storage_options)
    try:
        files = sorted(f for f in os.listdir(local) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"init_from {uri}: no .safetensors files there")
        state: dict[str, Any] = {}
        for f in files:
            state.update(load_file(os.path.join(local, f)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            log.warning("init_from %s: %d missing, %d unexpected keys", uri, len(missing), len(unexpected))
    finally:
        if temp:
            shutil.rmtree(local, ignore_errors=True)

"""Export: the trained model written by `system.export` into CKPT_ROOT.

At the end of a run the export goes to CKPT_ROOT/<run>/export/ (uploaded over what is there). A
system with ``export_group = "<group>"`` is ALSO exported into CKPT_ROOT/<group>/, merged with what
is there (`merge_into`): its files are written over the same names, top-level JSON objects (e.g. a
pipeline's model_index.json) are merged key by key, and nothing else is deleted, so systems that
each export one part of a pipeline fill one loadable folder. The MyTalk stages do this (group
"mytalk"):

    facefab train mytalk-motion --data ROOT --out CKPT --preset tiny     -> CKPT/mytalk/motion/
    facefab train mytalk-render --data ROOT --out CKPT --preset tiny     -> CKPT/mytalk/renderer/
    facefab dub --video V.mp4 --audio A.wav --model mytalk --checkpoint CKPT/mytalk --out OUT

summary.json records it as ``group_export_uri``. (Two runs of one group that finish at the same
instant may race on the merged JSON; run the stages one after the other.)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from facefab.manifests.storage import atomic_put_file, atomic_write_bytes, join_uri, read_bytes

from .systems import TrainingSystem

EXPORT_DIR = "export"


def group_export_uri(system: TrainingSystem, ckpt_root: str, run_name: str) -> str | None:
    """CKPT_ROOT/<export group>/ of `system`, or None when it has no group."""
    group = system.export_group
    if not group:
        return None
    if group == run_name:
        raise ValueError(f"run name {run_name!r} is {system.name}'s export group folder; choose another --run-name")
    return join_uri(ckpt_root, group)


def export_model(system: TrainingSystem, model, run_uri: str, group_uri: str | None,
                 storage_options: dict | None) -> None:
    """`system.export` of `model` as fp32 on the CPU, into run_uri/export/ and merged into `group_uri`.
    `model` itself moves to the CPU (the end of a run: nothing trains it afterwards)."""
    import torch

    if any(p.dtype != torch.float32 for p in model.parameters()):
        import copy

        model = copy.deepcopy(model).float()
    model = model.to("cpu")
    out = tempfile.mkdtemp(prefix="facefab-export-")
    try:
        system.export(model, out)
        upload_dir(out, join_uri(run_uri, EXPORT_DIR), storage_options)
        if group_uri:
            merge_into(out, group_uri, storage_options)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def upload_dir(local_dir: str, uri: str, storage_options: dict | None) -> None:
    """Every file under `local_dir` to the same relative path under `uri`, each one atomically."""
    for folder, _, files in os.walk(local_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), local_dir)
            atomic_put_file(os.path.join(folder, name), join_uri(uri, *rel.split(os.sep)), storage_options)


def merge_into(local_dir: str, uri: str, storage_options: dict | None) -> None:
    """Upload `local_dir` into the shared folder `uri` without removing anything there: files in
    subfolders first (written over the same names), then the top-level files, where a JSON object
    that already exists is merged key by key (e.g. model_index.json listing every part)."""
    entries = sorted(os.listdir(local_dir))
    for entry in entries:
        if os.path.isdir(os.path.join(local_dir, entry)):
            upload_dir(os.path.join(local_dir, entry), join_uri(uri, entry), storage_options)
    for name in entries:
        path, target = os.path.join(local_dir, name), join_uri(uri, name)
        if not os.path.isfile(path):
            continue
        merged = _merged_json(path, target, storage_options) if name.endswith(".json") else None
        if merged is not None:
            atomic_write_bytes(target, json.dumps(merged, indent=2, sort_keys=True).encode(), storage_options)
        else:
            atomic_put_file(path, target, storage_options)


def _merged_json(path: str, target: str, storage_options: dict | None) -> dict | None:
    """{**existing, **new} when both the local file and `target` hold a JSON object, else None."""
    with open(path) as f:
        new = json.load(f)
    try:
        old = json.loads(read_bytes(target, storage_options))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return {**old, **new} if isinstance(old, dict) and isinstance(new, dict) else None

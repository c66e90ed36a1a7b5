"""Training data: ROOT/manifest rows with status "ok" -> held-out clips split off (the `split` column
"val" if the manifest has one, else `val_clips` rows chosen by a seeded hash of their id) ->
`ray.data.from_items` -> `flat_map(system.make_samples)`. The trainer reads one streaming shard
per worker (`get_dataset_shard`), re-read on every pass and shuffled locally."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from facefab.manifests.io import read_manifest
from facefab.manifests.schemas import STATUS_OK
from facefab.manifests.storage import join_uri

from .config import TrainConfig
from .systems import TrainingSystem

log = logging.getLogger(__name__)

# manifest columns that are bookkeeping, not sample inputs (and do not travel well as items)
_BOOKKEEPING = {"error", "op_versions", "op_seconds", "updated_at", "attempts", "run_id"}


def load_rows(data_root: str, storage_options: dict | None) -> list[dict[str, Any]]:
    """The manifest's "ok" rows without bookkeeping columns, sorted by id."""
    table = read_manifest(data_root, storage_options)
    if table.num_rows == 0:
        raise ValueError(f"no manifest under {join_uri(data_root, 'manifest')} (run `facefab preprocess` first)")
    rows = [{k: v for k, v in r.items() if k not in _BOOKKEEPING}
            for r in table.to_pylist() if r.get("status") == STATUS_OK]
    if not rows:
        raise ValueError(f"{data_root}: the manifest has no rows with status 'ok'")
    return sorted(rows, key=lambda r: r["id"])


def split_rows(rows: list[dict[str, Any]], cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows)."""
    if any(r.get("split") for r in rows):
        train = [r for r in rows if (r.get("split") or "train") == "train"]
        val = [r for r in rows if r.get("split") in ("val", "validation")]
        return train, val
    if cfg.val_clips <= 0 or len(rows) <= cfg.val_clips:
        return list(rows), []
    ranked = sorted(rows, key=lambda r: hashlib.sha1(f"{cfg.seed}:{r['id']}".encode()).hexdigest())
    return ranked[cfg.val_clips:], ranked[:cfg.val_clips]


def _samples_of_row(row: dict[str, Any], system: TrainingSystem, storage_options: dict | None) -> list[dict[str, Any]]:
    try:
        return system.make_samples(row, storage_options)
    except Exception as exc:  # noqa: BLE001 -- one bad clip must not stop a training run
        log.warning("skipping row %s: %s: %s", row.get("id"), type(exc).__name__, exc)
        return []


def build_dataset(rows: list[dict[str, Any]], system: TrainingSystem, storage_options: dict | None, cfg: TrainConfig):
    """Lazy Ray Dataset of samples: one read task per manifest row (up to 2000 blocks), fanned out
    to the system's samples. Re-executed on every pass, so make_samples may draw new samples."""
    import ray

    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 2000)))
    return ds.flat_map(_samples_of_row, fn_kwargs={"system": system, "storage_options": storage_options},
                       num_cpus=cfg.data_cpus)

"""Per-frame arrays carried between operators inside a row.

Intermediate per-frame data (bboxes, 478-point landmarks, transforms, poses) travels in private
row columns (names start with '_', never written to the manifest) as compressed .npz bytes: Ray's
object store moves bytes cheaply, and rows stay flat and schema-stable.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def pack_arrays(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def unpack_arrays(blob: bytes | None) -> dict[str, np.ndarray]:
    if blob is None:
        raise ValueError("expected packed per-frame arrays, got nothing")
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def save_npz(uri: str, storage_options: dict[str, Any] | None = None, **arrays: np.ndarray) -> None:
    """Commit a compressed .npz artifact atomically (local or object storage)."""
    from facefab.manifests.storage import atomic_write_bytes

    atomic_write_bytes(uri, pack_arrays(**arrays), storage_options)


def load_npz(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    from facefab.manifests.storage import read_bytes

    return unpack_arrays(read_bytes(uri, storage_options))

"""Manifests: versioned Arrow schemas, sharded Parquet IO over fsspec, status and resume.

The names below are loaded on first use, so `facefab.manifests.registry` (imported by the CLI and
every layer) does not pull in pyarrow and fsspec.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ManifestWriter": "io", "read_manifest": "io", "read_table": "io",
    "ResumePlan": "resume", "plan_resume": "resume",
    "COMMON_FIELDS": "schemas", "MANIFEST_KINDS": "schemas", "SCHEMA_VERSION": "schemas",
    "STATUS_FAILED": "schemas", "STATUS_FILTERED": "schemas", "STATUS_OK": "schemas", "schema_for": "schemas",
    "atomic_write_bytes": "storage", "exists": "storage", "join_uri": "storage", "open_fs": "storage",
    "read_bytes": "storage", "storage_options_from_env": "storage",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)

"""Manifests: versioned Arrow schemas, sharded Parquet IO over fsspec, status and resume."""

from .io import ManifestWriter, read_manifest, read_table
from .resume import ResumePlan, plan_resume
from .schemas import (
    COMMON_FIELDS,
    MANIFEST_KINDS,
    SCHEMA_VERSION,
    STATUS_FAILED,
    STATUS_FILTERED,
    STATUS_OK,
    schema_for,
)
from .storage import atomic_write_bytes, exists, join_uri, open_fs, read_bytes, storage_options_from_env

__all__ = [
    "COMMON_FIELDS",
    "MANIFEST_KINDS",
    "SCHEMA_VERSION",
    "STATUS_FAILED",
    "STATUS_FILTERED",
    "STATUS_OK",
    "ManifestWriter",
    "ResumePlan",
    "atomic_write_bytes",
    "exists",
    "join_uri",
    "open_fs",
    "plan_resume",
    "read_bytes",
    "read_manifest",
    "read_table",
    "schema_for",
    "storage_options_from_env",
]

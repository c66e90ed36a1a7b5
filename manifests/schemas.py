"""Versioned Arrow schemas, one per manifest kind.

Every row of every manifest carries the common columns: a stable `id`, the `source_id` it was
derived from (resume bookkeeping), `status` (ok | failed | filtered), `error` (type, message and
the operator that raised it), `attempts`, the versions of the operators that produced it and the
seconds each spent. Kind-specific columns follow. Columns a pipeline adds beyond the declared
ones are kept (schema evolution) with their inferred types.

Bump SCHEMA_VERSION when a declared column changes meaning or type; it is stored in every
shard's metadata (b"facefab.schema_version") and checked on read.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_FILTERED = "filtered"
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_FILTERED)

ERROR_TYPE = pa.struct([("type", pa.string()), ("message", pa.string()), ("operator", pa.string())])

COMMON_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("source_id", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", ERROR_TYPE),
    pa.field("attempts", pa.int32()),
    pa.field("op_versions", pa.map_(pa.string(), pa.string())),
    pa.field("op_seconds", pa.map_(pa.string(), pa.float64())),
    pa.field("run_id", pa.string()),
    # fan-out lineage, '.'-joined 'i/n' per fan-out step ("3/12.0/2": track 0 of 2 of clip 3 of 12);
    # resume counts an input done only when its rows cover the whole tree
    pa.field("parts", pa.string()),
    pa.field("updated_at", pa.timestamp("ms", tz="UTC")),
]

_VIDEO_FIELDS = [
    pa.field("video_uri", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("fps", pa.float64()),
    pa.field("duration", pa.float64()),
    pa.field("num_frames", pa.int64()),
    pa.field("rotation", pa.int32()),
    pa.field("has_audio", pa.bool_()),
]

_CLIP_FIELDS = [
    pa.field("video_uri", pa.string()),
    pa.field("clip_index", pa.int32()),
    pa.field("track_id", pa.int32()),
    pa.field("start", pa.float64()),
    pa.field("end", pa.float64()),
    pa.field("fps", pa.float64()),
    pa.field("num_frames", pa.int64()),
    pa.field("crop_size", pa.int32()),
    pa.field("clip_uri", pa.string()),
    pa.field("crop_uri", pa.string()),
    pa.field("frames_uri", pa.string()),
    pa.field("masks_uri", pa.string()),
    pa.field("audio_features_uri", pa.string()),
    pa.field("flow_uri", pa.string()),
]

_FRAME_FIELDS = [
    pa.field("clip_id", pa.string()),
    pa.field("track_id", pa.int32()),
    pa.field("frame_index", pa.int32()),
    pa.field("time", pa.float64()),
    pa.field("bbox", pa.list_(pa.float32(), 4)),
    pa.field("landmarks", pa.list_(pa.float32())),  # 478*3 flattened, pixel coords of the source frame
    pa.field("pose", pa.list_(pa.float32(), 6)),  # yaw, pitch, roll (deg), tx, ty, tz
    pa.field("inverse_transform", pa.list_(pa.float32(), 6)),  # 2x3 crop -> frame affine
]

_GENERATION_FIELDS = [
    pa.field("job_id", pa.string()),
    pa.field("model", pa.string()),
    pa.field("checkpoint", pa.string()),
    pa.field("video_uri", pa.string()),
    pa.field("audio_uri", pa.string()),
    pa.field("reference_uri", pa.string()),
    pa.field("out_uri", pa.string()),
    pa.field("out_name", pa.string()),
    pa.field("duration", pa.float64()),
]

_TRAINSET_FIELDS = [
    pa.field("clip_id", pa.string()),
    pa.field("split", pa.string()),
    pa.field("crop_uri", pa.string()),
    pa.field("frames_uri", pa.string()),
    pa.field("audio_features_uri", pa.string()),
    pa.field("num_frames", pa.int64()),
]

MANIFEST_KINDS: dict[str, list[pa.Field]] = {
    "videos": _VIDEO_FIELDS,
    "clips": _CLIP_FIELDS,
    "frames": _FRAME_FIELDS,
    "dub": _GENERATION_FIELDS,
    "animate": _GENERATION_FIELDS,
    "makeup": _GENERATION_FIELDS,
    "swap": _GENERATION_FIELDS,
    "trainset": _TRAINSET_FIELDS,
}

# Per-frame feature tables are artifacts, not status-tracked manifests: no common columns.
STATUSLESS_KINDS = {"frames"}


def schema_for(kind: str, version: int = SCHEMA_VERSION) -> pa.Schema:
    if kind not in MANIFEST_KINDS:
        raise ValueError(f"unknown manifest kind {kind!r}; known: {sorted(MANIFEST_KINDS)}")
    if version != SCHEMA_VERSION:
        raise ValueError(f"manifest schema version {version} is not supported by this facefab "
                         f"(supports {SCHEMA_VERSION}); upgrade facefab or rewrite the manifest")
    declared = MANIFEST_KINDS[kind] if kind in STATUSLESS_KINDS else COMMON_FIELDS + MANIFEST_KINDS[kind]
    return pa.schema(declared, metadata={b"facefab.kind": kind.encode(),
                                         b"facefab.schema_version": str(version).encode()})

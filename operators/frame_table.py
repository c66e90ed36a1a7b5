"""Per-frame features of a track as one Parquet table (the `frames` manifest kind).

Collects what the face operators carried in the row (bbox, 478 landmarks, pose, crop->frame
transform) into ROOT/artifacts/frames/..../<track id>.parquet and records its URI in `frames_uri`.
Columns whose operator did not run (a subset run) are written as nulls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facefab.manifests.io import rows_to_table, write_table
from facefab.media.arrays import unpack_arrays

from .base import Operator, Resources, register_stage

PRIVATE_COLUMNS = ("_track", "_landmarks", "_align", "_pose")


def frame_rows(row: dict) -> list[dict]:
    track = unpack_arrays(row["_track"])
    n = len(track["frame_index"])
    lms = unpack_arrays(row["_landmarks"])["landmarks"] if row.get("_landmarks") else None
    inverse = unpack_arrays(row["_align"])["inverse"] if row.get("_align") else None
    pose = unpack_arrays(row["_pose"])["pose"] if row.get("_pose") else None
    fps = float(row.get("fps") or 25.0)
    start = float(row.get("start") or 0.0)

    def flat(a, i):
        if a is None or not np.all(np.isfinite(a[i])):
            return None
        return a[i].astype(np.float32).reshape(-1).tolist()

    return [{
        "clip_id": row.get("clip_id") or row.get("source_id"),
        "track_id": int(row.get("track_id") or 0),
        "frame_index": int(track["frame_index"][i]),
        "time": start + float(track["frame_index"][i]) / fps,
        "bbox": flat(track["bbox"], i),
        "landmarks": flat(lms, i),
        "pose": flat(pose, i),
        "inverse_transform": flat(inverse, i),
    } for i in range(n)]


@register_stage
class WriteFrameFeatures(Operator):
    name = "frame_table"
    version = "1"
    inputs = ("_track",)
    outputs = ("frames_uri",)
    default_resources = Resources(num_cpus=0.25)

    @dataclass
    class Config:
        drop_private: bool = True  # free the carried arrays once they are on storage

    def process_row(self, row):
        uri = self.ctx.artifact_uri("frames", row["id"], ".parquet")
        write_table(uri, rows_to_table(frame_rows(row), "frames"), self.ctx.storage_options)
        out = {"frames_uri": uri}
        if self.config.drop_private:
            out.update(dict.fromkeys(PRIVATE_COLUMNS))
        return out

"""`facefab swap`: a source face on the faces of videos, one row per (video, source).

    swap_face       (facefab.operators.swap)

Rows (kind "swap") carry job_id, model, checkpoint, video_uri, reference_uri (the source face), out_uri,
out_name, frames, duration, the tracks swapped and `stage_seconds`.
"""

from __future__ import annotations

from typing import Any

from facefab.operators.base import Operator, RunContext
from facefab.operators.swap import SwapFace, SwapJobConfig, validate

from .engine import RunSummary
from .face_edit import face_edit_inputs, run_face_edit


def build_operators(config: SwapJobConfig) -> list[Operator]:
    validate(config)
    return [SwapFace(config)]


def swap_inputs(manifest: str | None = None, video: str | None = None, source: str | None = None,
                storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return face_edit_inputs("swap", manifest, video, source, storage_options, reference_flag="--source")


def run_swap(inputs: list[dict[str, Any]], config: SwapJobConfig, ctx: RunContext, **run_options: Any) -> RunSummary:
    return run_face_edit("swap", build_operators(config), inputs, config, ctx, **run_options)


__all__ = ["build_operators", "run_swap", "swap_inputs"]

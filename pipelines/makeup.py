"""`facefab makeup`: one reference face's makeup on the faces of videos, one row per (video, reference).

    apply_makeup       (facefab.operators.makeup)

Rows (kind "makeup") carry job_id, model, checkpoint, video_uri, reference_uri, out_uri, out_name, frames,
duration, the tracks made up and `stage_seconds`.
"""

from __future__ import annotations

from typing import Any

from facefab.operators.base import Operator, RunContext
from facefab.operators.makeup import ApplyMakeup, MakeupJobConfig, validate

from .engine import RunSummary
from .face_edit import editor_operators, run_face_edit


def build_operators(config: MakeupJobConfig) -> list[Operator]:
    validate(config)
    return editor_operators(ApplyMakeup, config)


def run_makeup(inputs: list[dict[str, Any]], config: MakeupJobConfig, ctx: RunContext,
               **run_options: Any) -> RunSummary:
    return run_face_edit("makeup", build_operators(config), inputs, config, ctx, **run_options)


__all__ = ["build_operators", "run_makeup"]

"""`facefab makeup`: one reference face's makeup on the faces of videos, one row per (video, reference).

    apply_makeup       (facefab.operators.makeup)

Rows (kind "makeup") carry job_id, model, checkpoint, video_uri, reference_uri, out_uri, out_name, frames,
duration, the tracks made up and `stage_seconds`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from facefab.operators.base import Operator, RunContext
from facefab.operators.makeup import ApplyMakeup, MakeupJobConfig, validate

from .engine import PipelineRun, RunSummary, run_pipeline


def build_operators(config: MakeupJobConfig) -> list[Operator]:
    validate(config)
    return [ApplyMakeup(config)]


def makeup_inputs(manifest: str | None = None, video: str | None = None, reference: str | None = None,
                  storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Input rows {id, video_uri, reference_uri, job_id, out_name, ...} from a Parquet/CSV manifest or one
    pair; the id is stable over (video_uri, reference_uri, job_id), so reruns resume."""
    from .inputs import pair_inputs

    return pair_inputs("makeup", manifest, {"video_uri": video, "reference_uri": reference}, storage_options)


def run_makeup(inputs: list[dict[str, Any]], config: MakeupJobConfig, ctx: RunContext,
               **run_options: Any) -> RunSummary:
    """Make up `inputs`; `run_options` are PipelineRun's (resume, max_attempts, limit, progress,
    max_failed_fraction, commit_seconds)."""
    ops = build_operators(config)
    inputs = [{**row, "model": "weightfree"} for row in inputs]
    run = PipelineRun("makeup", "makeup", ctx, config=asdict(config), **run_options)
    return run_pipeline(run, ops, inputs)


__all__ = ["build_operators", "makeup_inputs", "run_makeup"]

"""`facefab animate` from speech: one portrait + one speech track per manifest row.

    animate_portrait       (the stage: facefab.operators.animate)

Rows (kind "animate") carry job_id, model, reference_uri, audio_uri, out_uri, out_name, frames,
duration and `stage_seconds`.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from facefab.operators.animate import AnimateConfig, AnimatePortrait, validate
from facefab.operators.base import Operator, RunContext

from .engine import PipelineRun, RunSummary, run_pipeline


def build_operators(config: AnimateConfig) -> list[Operator]:
    validate(config)
    return [AnimatePortrait(replace(config, model="weightfree"))]


def animate_inputs(manifest: str | None = None, reference: str | None = None, audio: str | None = None,
                   storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Input rows {id, reference_uri, audio_uri, job_id, out_name, ...} from a Parquet/CSV manifest
    (columns reference_uri, audio_uri, optional job_id, out_name; other columns are kept) or one
    pair. The id is stable over (reference_uri, audio_uri, job_id), so reruns resume."""
    from .inputs import pair_inputs

    return pair_inputs("animate", manifest, {"reference_uri": reference, "audio_uri": audio}, storage_options)


def run_animate(inputs: list[dict[str, Any]], config: AnimateConfig, ctx: RunContext,
                **run_options: Any) -> RunSummary:
    """Animate `inputs`; `run_options` are PipelineRun's (resume, max_attempts, limit, progress,
    max_failed_fraction, commit_seconds)."""
    ops = build_operators(config)
    inputs = [{**row, "model": "weightfree"} for row in inputs]
    run = PipelineRun("animate", "animate", ctx, config=asdict(replace(config, model="weightfree")), **run_options)
    return run_pipeline(run, ops, inputs)


__all__ = ["animate_inputs", "build_operators", "run_animate"]

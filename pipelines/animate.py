"""`facefab animate` from speech: one portrait + one speech track (+ an optional pose to follow) per row.

    animate_portrait       (the stage: facefab.operators.animate)

Rows (kind "animate") carry job_id, model, checkpoint, reference_uri, audio_uri, pose_uri, out_uri,
out_name, frames, duration and `stage_seconds`.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from facefab.operators.animate import NEURAL, AnimateConfig, AnimatePortrait, pipeline_name, validate
from facefab.operators.base import Operator, Resources, RunContext

from .engine import PipelineRun, RunSummary, run_pipeline


def resolve_model(config: AnimateConfig, storage_options: dict | None = None) -> AnimateConfig:
    """`config` with `model` named: "auto" is the weight-free photo without a checkpoint, else the
    system the checkpoint's model_index.json names. A neural model without weights is a usage error."""
    from facefab.models.registry import checkpoint_for, env_var

    validate(config)
    if config.model == "auto":
        model = pipeline_name(config.checkpoint, storage_options) if config.checkpoint else "weightfree"
        return replace(config, model=model)
    if config.model in NEURAL and not (config.checkpoint or checkpoint_for(config.model)):
        raise ValueError(f"--model {config.model} needs weights: --checkpoint DIR or ${env_var(config.model)} "
                         f"(none ship; make them with `facefab train {config.model}` or `facefab convert "
                         f"{config.model}` from the released checkpoint)")
    return config


def build_operators(config: AnimateConfig, storage_options: dict | None = None) -> list[Operator]:
    config = resolve_model(config, storage_options)
    # a neural model takes a GPU per actor when the cluster has them (GeneratorOperator's default)
    resources = AnimatePortrait.default_resources if config.model == "weightfree" else Resources(num_cpus=0.5,
                                                                                                 num_gpus=1.0)
    return [AnimatePortrait(config, resources=resources)]


def animate_inputs(manifest: str | None = None, reference: str | None = None, audio: str | None = None,
                   storage_options: dict[str, Any] | None = None, pose: str | None = None) -> list[dict[str, Any]]:
    """Input rows {id, reference_uri, audio_uri, job_id, out_name, ...} from a Parquet/CSV manifest
    (columns reference_uri, audio_uri, optional pose_uri, job_id, out_name; other columns are kept) or
    one pair (+ pose). The id is stable over (reference_uri, audio_uri, job_id), so reruns resume."""
    from .inputs import pair_inputs

    rows = pair_inputs("animate", manifest, {"reference_uri": reference, "audio_uri": audio}, storage_options)
    if pose:
        if manifest:
            raise ValueError("--pose goes with --reference/--audio; a manifest gives pose_uri per row")
        rows = [{**row, "pose_uri": pose} for row in rows]
    return rows


def run_animate(inputs: list[dict[str, Any]], config: AnimateConfig, ctx: RunContext,
                **run_options: Any) -> RunSummary:
    """Animate `inputs`; `run_options` are PipelineRun's (resume, max_attempts, limit, progress,
    max_failed_fraction, commit_seconds)."""
    ops = build_operators(config, ctx.storage_options)
    config = ops[0].config
    inputs = [{**row, "model": config.model} for row in inputs]
    run = PipelineRun("animate", "animate", ctx, config=asdict(config), **run_options)
    return run_pipeline(run, ops, inputs)


__all__ = ["animate_inputs", "build_operators", "resolve_model", "run_animate"]

"""`facefab animate`: one portrait per row, moved by a speech track (+ an optional pose to follow), by a
driving video, or along point trajectories.

    animate_portrait       from speech (facefab.operators.animate)
    reenact_portrait       from a driving video (facefab.operators.reenact)
    trajectory_portrait    along trajectories (facefab.operators.reenact)

Rows (kind "animate") carry job_id, model, checkpoint, reference_uri, audio_uri (+ pose_uri) or video_uri
or trajectories_uri, out_uri, out_name, frames, duration and `stage_seconds`.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from facefab.operators.animate import AnimateConfig, AnimatePortrait, PortraitJobConfig, pipeline_name, validate
from facefab.operators.base import Operator, Resources, RunContext
from facefab.operators.reenact import ReenactJobConfig, ReenactPortrait, TrajectoryJobConfig, TrajectoryPortrait

from .engine import PipelineRun, RunSummary, run_pipeline


def resolve_model(config: PortraitJobConfig, storage_options: dict | None = None) -> PortraitJobConfig:
    """`config` with `model` named: "auto" is the weight-free photo without a checkpoint, else the
    system the checkpoint's model_index.json names. A neural model without weights is a usage error."""
    from facefab.models.registry import checkpoint_for, env_var

    validate(config)
    if config.model == "auto":
        model = pipeline_name(config.checkpoint, storage_options, config.neural) if config.checkpoint else "weightfree"
        return replace(config, model=model)
    if config.model in config.neural and not (config.checkpoint or checkpoint_for(config.model)):
        raise ValueError(f"--model {config.model} needs weights: --checkpoint DIR or ${env_var(config.model)} "
                         f"(none ship; make them with `facefab train {config.model}` or `facefab convert "
                         f"{config.model}` from the released checkpoint)")
    return config


def build_operators(config: PortraitJobConfig, storage_options: dict | None = None) -> list[Operator]:
    config = resolve_model(config, storage_options)
    stage = {ReenactJobConfig: ReenactPortrait, TrajectoryJobConfig: TrajectoryPortrait}.get(type(config),
                                                                                           AnimatePortrait)
    # a neural model takes a GPU per actor when the cluster has them (GeneratorOperator's default)
    resources = stage.default_resources if config.model == "weightfree" else Resources(num_cpus=0.5, num_gpus=1.0)
    return [stage(config, resources=resources)]


SECOND_INPUTS = {"audio_uri": AnimateConfig, "video_uri": ReenactJobConfig, "trajectories_uri": TrajectoryJobConfig}


def config_class(inputs: list[dict[str, Any]]) -> type[PortraitJobConfig]:
    """The job's settings class, by what moves the portrait: speech, a driving video or trajectories."""
    return next(cls for column, cls in SECOND_INPUTS.items() if column in inputs[0])


def animate_inputs(manifest: str | None = None, reference: str | None = None, audio: str | None = None,
                   storage_options: dict[str, Any] | None = None, pose: str | None = None,
                   driving: str | None = None, trajectories: str | None = None) -> list[dict[str, Any]]:
    """Input rows {id, reference_uri, audio_uri | video_uri | trajectories_uri, job_id, out_name, ...}
    from a Parquet/CSV manifest (reference_uri and one of audio_uri (+ optional pose_uri), video_uri (a
    driving video) or trajectories_uri; optional job_id, out_name; other columns are kept), or one
    portrait with --audio (+ --pose), --driving or --trajectories. The id is stable over (both URIs,
    job_id), so reruns resume."""
    from .inputs import pair_inputs, read_catalog_table

    given = {"audio_uri": audio, "video_uri": driving, "trajectories_uri": trajectories}
    flags = "--audio (from speech), --driving (from a driving video) or --trajectories"
    if manifest:
        records = read_catalog_table(manifest, storage_options)
        present = [c for c in SECOND_INPUTS if c in (records[0] if records else {})]
        if len(present) > 1:
            raise ValueError(f"{manifest}: an animate manifest has one of audio_uri, video_uri or trajectories_uri "
                             f"beside reference_uri, not {' and '.join(present)}")
        column = present[0] if present else "audio_uri"
    else:
        chosen = [c for c, v in given.items() if v]
        if len(chosen) > 1:
            raise ValueError(f"give one of {flags}, not several")
        column = chosen[0] if chosen else "audio_uri"
    rows = pair_inputs("animate", manifest, {"reference_uri": reference, column: given[column]}, storage_options)
    if pose and column != "audio_uri":
        raise ValueError("--pose goes with --audio: a driving video or trajectories give the motion themselves")
    if pose:
        if manifest:
            raise ValueError("--pose goes with --reference/--audio; a manifest gives pose_uri per row")
        rows = [{**row, "pose_uri": pose} for row in rows]
    return rows


def run_animate(inputs: list[dict[str, Any]], config: PortraitJobConfig, ctx: RunContext,
                **run_options: Any) -> RunSummary:
    """Animate `inputs`; `run_options` are PipelineRun's (resume, max_attempts, limit, progress,
    max_failed_fraction, commit_seconds)."""
    ops = build_operators(config, ctx.storage_options)
    config = ops[0].config
    inputs = [{**row, "model": config.model} for row in inputs]
    run = PipelineRun("animate", "animate", ctx, config=asdict(config), **run_options)
    return run_pipeline(run, ops, inputs)


__all__ = ["animate_inputs", "build_operators", "config_class", "resolve_model", "run_animate"]

"""`facefab dub`: lip-sync talking videos to new audio tracks, one manifest row per (video, audio) pair.

    dub_analyze -> lip_sync -> dub_score       (the stages: facefab.operators.dub; one chain per
                                                worker when the generator is the weight-free one)

Rows (kind "dub") carry the generation columns (job_id, model, checkpoint, video_uri, audio_uri,
out_uri, out_name, duration) plus the scores and `stage_seconds` (JSON: seconds per stage).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from facefab.operators.base import Operator, OperatorChain, Resources, RunContext
from facefab.operators.dub import DubAnalyze, DubConfig, DubScore, LipSync, validate

from .engine import PipelineRun, RunSummary, run_pipeline


def resolve_model(config: DubConfig) -> DubConfig:
    """`model` and `checkpoint` made explicit: "auto" is MyTalk when a checkpoint is configured
    (config or $FACEFAB_CHECKPOINT_MYTALK), else the weight-free default."""
    from facefab.models.registry import checkpoint_for, env_var

    checkpoint = config.checkpoint or checkpoint_for("mytalk")
    if config.model == "weightfree" or (config.model == "auto" and not checkpoint):
        return replace(config, model="weightfree", checkpoint=None)
    if not checkpoint:
        raise ValueError(f"model mytalk needs a checkpoint (--checkpoint or ${env_var('mytalk')})")
    return replace(config, model="mytalk", checkpoint=checkpoint)



def build_operators(config: DubConfig) -> list[Operator]:
    """The stages; with the weight-free generator (all on CPU) and `fuse`, one chain per worker: the
    video the analysis decoded stays in the worker's frame cache for the lip sync, a run starts one
    pool of workers instead of three, and locally that pool has a worker per CPU share, so the rows
    (the languages of one video too) spread over the machine instead of queueing at one stage."""
    validate(config)
    config = resolve_model(config)
    generator = Resources(num_cpus=1.0) if config.model == "weightfree" else LipSync.default_resources
    ops: list[Operator] = [DubAnalyze(config), LipSync(config, resources=generator)]
    if config.score:
        ops.append(DubScore(config))
    if config.fuse and config.model == "weightfree":
        return [OperatorChain(ops, resources=Resources(num_cpus=1.0, pool_size=0))]
    return ops


def dub_inputs(manifest: str | None = None, video: str | None = None, audio: str | None = None,
               storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Input rows {id, video_uri, audio_uri, job_id, out_name, ...} from a Parquet/CSV manifest
    (columns video_uri, audio_uri, optional job_id, out_name; other columns are kept) or one pair.
    The id is stable over (video_uri, audio_uri, job_id), so reruns resume."""
    from .inputs import pair_inputs

    return pair_inputs("dub", manifest, {"video_uri": video, "audio_uri": audio}, storage_options)


def run_dub(inputs: list[dict[str, Any]], config: DubConfig, ctx: RunContext, **run_options: Any) -> RunSummary:
    """Dub `inputs`; `run_options` are PipelineRun's (resume, max_attempts, limit, progress,
    max_failed_fraction, commit_seconds)."""
    ops = build_operators(config)
    resolved = resolve_model(config)
    # rows that fail before generation still say which model the job was for
    inputs = [{**row, "model": resolved.model, "checkpoint": resolved.checkpoint} for row in inputs]
    run = PipelineRun("dub", "dub", ctx, config=asdict(resolved), **run_options)
    return run_pipeline(run, ops, inputs)


__all__ = ["build_operators", "dub_inputs", "resolve_model", "run_dub"]

"""`facefab dub`: lip-sync talking videos to new audio tracks, one manifest row per (video, audio) pair.

    dub_analyze -> lip_sync -> dub_score       (the stages: facefab.operators.dub)

Rows (kind "dub") carry the generation columns (job_id, model, checkpoint, video_uri, audio_uri,
out_uri, out_name, duration) plus the scores and `stage_seconds` (JSON: seconds per stage).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from facefab.manifests.storage import absolute_uri
from facefab.operators.base import Operator, Resources, RunContext, stable_id
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
    validate(config)
    config = resolve_model(config)
    generator = Resources(num_cpus=1.0) if config.model == "weightfree" else LipSync.default_resources
    ops: list[Operator] = [DubAnalyze(config), LipSync(config, resources=generator)]
    if config.score:
        ops.append(DubScore(config))
    return ops


def _check_out_names(rows: list[dict[str, Any]]) -> None:
    seen: dict[str, str] = {}
    for row in rows:
        name = row.get("out_name")
        if not name:
            continue
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"out_name {name!r} must be a relative name inside ROOT/outputs")
        key = name.lower().removesuffix(".mp4")
        if key in seen:
            raise ValueError(f"out_name {name!r} is used by more than one input row; outputs would overwrite")
        seen[key] = row["id"]


def dub_inputs(manifest: str | None = None, video: str | None = None, audio: str | None = None,
               storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Input rows {id, video_uri, audio_uri, job_id, out_name, ...} from a Parquet/CSV manifest
    (columns video_uri, audio_uri, optional job_id, out_name; other columns are kept) or one pair.
    The id is stable over (video_uri, audio_uri, job_id), so reruns resume."""
    from .inputs import read_catalog_table

    if manifest and (video or audio):
        raise ValueError("give either a MANIFEST or --video/--audio, not both")
    if manifest:
        records = read_catalog_table(manifest, storage_options)
        missing = {"video_uri", "audio_uri"} - set(records[0] if records else {})
        if missing:
            raise ValueError(f"{manifest}: a dub manifest needs the columns video_uri and audio_uri "
                             f"(missing: {sorted(missing)})")
    elif video and audio:
        records = [{"video_uri": video, "audio_uri": audio}]
    else:
        raise ValueError("nothing to dub: give a MANIFEST, or both --video and --audio")
    rows: dict[str, dict[str, Any]] = {}
    for rec in records:
        rec = {**rec, "video_uri": absolute_uri(rec.get("video_uri")), "audio_uri": absolute_uri(rec.get("audio_uri"))}
        if rec.get("out_name") is not None:  # a CSV column of numbers reads as integers
            rec["out_name"] = str(rec["out_name"])
        row_id = stable_id("dub", rec["video_uri"], rec["audio_uri"], rec.get("job_id"))
        rows.setdefault(row_id, {**rec, "id": row_id, "job_id": rec.get("job_id") or row_id})
    if not rows:
        raise ValueError(f"{manifest}: the manifest has no rows")
    out = list(rows.values())
    _check_out_names(out)
    return out


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

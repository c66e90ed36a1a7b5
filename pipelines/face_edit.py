"""What the face-editing journeys (`facefab makeup`, `facefab swap`) share: their input rows and their
run; each journey's DAG is its one stage (`facefab.operators.makeup`, `facefab.operators.swap`)."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from facefab.operators.base import Operator, Resources, RunContext

from .engine import PipelineRun, RunSummary, run_pipeline


def face_edit_inputs(kind: str, manifest: str | None, video: str | None, reference: str | None,
                     storage_options: dict[str, Any] | None = None, reference_flag: str = "--reference",
                     target_flag: str = "--video") -> list[dict[str, Any]]:
    """Input rows {id, video_uri, reference_uri, job_id, out_name, ...} from a Parquet/CSV manifest or one
    pair; the id is stable over (video_uri, reference_uri, job_id), so reruns resume. A `video_uri` naming
    an image (.jpg, .png, ...) is edited as a still."""
    from .inputs import pair_inputs

    return pair_inputs(kind, manifest, {"video_uri": video, "reference_uri": reference}, storage_options,
                       flag_names={"video_uri": target_flag, "reference_uri": reference_flag})


def editor_operators(stage: type, config: Any) -> list[Operator]:
    """The journey's one stage: its neural system (config.model names it, or "auto" with weights
    configured) on actors that take a GPU when the run uses GPUs; the weight-free model on half a CPU.
    A neural model asked for by name without weights is a usage error."""
    from facefab.models.registry import checkpoint_for, env_var

    name = stage.model_name
    weights = config.checkpoint or checkpoint_for(name)
    if config.model == name and not weights:
        raise ValueError(f"--model {name} needs weights: --checkpoint DIR or ${env_var(name)} (none ship; make "
                         f"them with `facefab train {name}`)")
    neural = config.model == name or (config.model == "auto" and bool(weights))
    config = replace(config, model=name if neural else "weightfree")  # "auto" resolved, as the rows record it
    return [stage(config, resources=Resources(num_cpus=0.5, num_gpus=1.0) if neural else None)]


def run_face_edit(kind: str, ops: list[Operator], inputs: list[dict[str, Any]], config: Any, ctx: RunContext,
                  **run_options: Any) -> RunSummary:
    """Run the journey's stage over `inputs`; `run_options` are PipelineRun's (resume, max_attempts, limit,
    progress, max_failed_fraction, commit_seconds)."""
    inputs = [{**row, "model": ops[0].config.model} for row in inputs]  # the stage's resolved model
    run = PipelineRun(kind, kind, ctx, config=asdict(config), **run_options)
    return run_pipeline(run, ops, inputs)


__all__ = ["editor_operators", "face_edit_inputs", "run_face_edit"]

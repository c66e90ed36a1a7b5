"""`facefab preprocess`: raw videos -> clips -> face tracks with every per-frame feature.

    probe -> shots (fan-out: clips) -> faces (fan-out: tracks) -> landmarks -> align -> pose
          -> parsing -> audio -> [speech_encoder] -> flow -> quality -> frame_table -> filter

One manifest row per face track of a clip (kind `clips`). Scores are stored; the `filter` step
applies thresholds from the config and marks rows `filtered` with the reasons, so thresholds can
change without recomputing anything (`facefab preprocess --operators filter` re-filters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from facefab.manifests.storage import open_fs
from facefab.operators.align import AlignCrop
from facefab.operators.audio import AudioFeatures, SpeechEncoder
from facefab.operators.base import STAGES, Operator, OperatorChain, Resources, RunContext
from facefab.operators.faces import FaceTrack
from facefab.operators.flow import OpticalFlow
from facefab.operators.frame_table import WriteFrameFeatures
from facefab.operators.landmarks import FaceLandmarks
from facefab.operators.parsing import FaceParsing
from facefab.operators.pose import HeadPose
from facefab.operators.probe import ProbeVideo
from facefab.operators.quality import QualityFilter, QualityScores
from facefab.operators.shots import ShotClips

from .engine import PipelineRun, RunSummary, run_pipeline

# DAG order; each name is a registered stage (operators.base.STAGES) and a section of PreprocessConfig
STAGE_ORDER = ("probe", "shots", "faces", "landmarks", "align", "pose", "parsing", "audio", "speech_encoder", "flow",
               "quality", "frame_table", "filter")
OPTIONAL_STAGES = {"speech_encoder"}  # runs only when configured (a model path)


@dataclass
class PreprocessConfig:
    operators: list[str] | None = field(default=None, metadata={"help": "run only these stages (comma-separated)"})
    fuse: bool = field(default=True, metadata={"help": "run the per-track stages as one chain per worker "
                                                        "(data parallel) instead of one actor pool per stage"})
    workers: int = field(default=0, metadata={"help": "chain workers (1 CPU each): on a cluster the most the pool "
                                                      "grows to, locally its size, at most one per CPU (0: as many "
                                                      "as the cluster holds at its largest / one per CPU)"})
    largest_first: bool = field(default=True, metadata={"help": "start the biggest input files first, so the "
                                                                 "run does not end waiting on one long video"})
    probe: ProbeVideo.Config = field(default_factory=ProbeVideo.Config)
    shots: ShotClips.Config = field(default_factory=ShotClips.Config)
    faces: FaceTrack.Config = field(default_factory=FaceTrack.Config)
    landmarks: FaceLandmarks.Config = field(default_factory=FaceLandmarks.Config)
    align: AlignCrop.Config = field(default_factory=AlignCrop.Config)
    pose: HeadPose.Config = field(default_factory=HeadPose.Config)
    parsing: FaceParsing.Config = field(default_factory=FaceParsing.Config)
    audio: AudioFeatures.Config = field(default_factory=AudioFeatures.Config)
    speech_encoder: SpeechEncoder.Config = field(default_factory=SpeechEncoder.Config)
    flow: OpticalFlow.Config = field(default_factory=OpticalFlow.Config)
    quality: QualityScores.Config = field(default_factory=QualityScores.Config)
    frame_table: WriteFrameFeatures.Config = field(default_factory=WriteFrameFeatures.Config)
    filter: QualityFilter.Config = field(default_factory=QualityFilter.Config)


def _stage_enabled(name: str, config: PreprocessConfig) -> bool:
    if name == "speech_encoder":
        return bool(getattr(config.speech_encoder, "model_path", None))
    return True


def build_operators(config: PreprocessConfig) -> list[Operator]:
    """The operators to run, in order; validates a --operators subset against the columns."""
    known = list(STAGE_ORDER)
    selected = config.operators or [n for n in known if _stage_enabled(n, config)]
    unknown = [n for n in selected if n not in known]
    if unknown:
        raise ValueError(f"unknown operator(s) {unknown}; choose from {known}")
    ops = [STAGES.get(name)(getattr(config, name)) for name in STAGE_ORDER if name in selected]
    check_columns(ops, available={"id", "video_uri"})
    return ops


def check_columns(ops: list[Operator], available: set[str]) -> None:
    """Every operator's inputs must come from the input rows or an earlier operator."""
    have = set(available)
    for op in ops:
        missing = [c for c in op.inputs if c not in have]
        if missing:
            raise ValueError(f"operator {op.name!r} needs {missing}, which no earlier stage produces; "
                             f"add the stage that makes them to --operators")
        have.update(op.outputs)


def plan_stages(ops: list[Operator], config: PreprocessConfig) -> list[Operator]:
    """With `fuse`, keep the per-video tasks (probe, shots) as they are and host everything from
    the first stateful operator on in one OperatorChain per worker."""
    if not config.fuse:
        return ops
    first = next((i for i, op in enumerate(ops) if op.stateful), None)
    if first is None or first == len(ops) - 1:
        return ops
    chain = OperatorChain(ops[first:])
    chain.resources = Resources(num_cpus=1.0, num_gpus=chain.resources.num_gpus, pool_size=config.workers,
                                max_pool_size=config.workers)
    return [*ops[:first], chain]


def preprocess_operators(config: PreprocessConfig) -> list[Operator]:
    """The operators a preprocess run hands to the engine (its stages, fused per `fuse`)."""
    return plan_stages(build_operators(config), config)


def largest_first(storage_options: dict[str, Any] | None) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Order inputs by file size, biggest first (longest-processing-time-first scheduling)."""

    def order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sizes = {}
        for row in rows:
            try:
                fs, path = open_fs(row["video_uri"], storage_options)
                sizes[row["id"]] = fs.size(path) or 0
            except Exception:  # noqa: BLE001 - missing, unreachable or no credentials: `probe` fails that row
                sizes[row["id"]] = 0
        return sorted(rows, key=lambda r: -sizes[r["id"]])

    return order


def run_preprocess(inputs: list[dict[str, Any]], config: PreprocessConfig, ctx: RunContext,
                   **run_options: Any) -> RunSummary:
    """Preprocess `inputs`; `run_options` are PipelineRun's (resume, max_attempts, limit, progress,
    max_failed_fraction, commit_seconds)."""
    ops = preprocess_operators(config)
    run = PipelineRun("preprocess", "clips", ctx, config=asdict(config),
                      order=largest_first(ctx.storage_options) if config.largest_first else None, **run_options)
    return run_pipeline(run, ops, inputs)

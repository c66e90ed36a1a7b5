"""Pipelines: Ray Data DAGs built from operators (preprocess, dub, animate, makeup, swap, train)."""

from .engine import PipelineRun, RunSummary, build_dataset, init_ray, run_local, run_pipeline

__all__ = ["PipelineRun", "RunSummary", "build_dataset", "init_ray", "run_local", "run_pipeline"]

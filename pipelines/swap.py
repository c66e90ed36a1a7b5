"""`facefab swap`: a source face on the faces of videos, one row per (video, source).

    swap_face           (facefab.operators.swap)             --mode swap (the default)
    reenact_portrait    (facefab.operators.reenact)          --mode reenact: the source moved like the video

Rows (kind "swap") carry job_id, model, checkpoint, video_uri, reference_uri (the source face), out_uri,
out_name, frames, duration, the tracks swapped and `stage_seconds`.
"""

from __future__ import annotations

from typing import Any

from facefab.operators.base import Operator, RunContext
from facefab.operators.swap import SwapFace, SwapJobConfig, validate_swap

from . import animate
from .engine import RunSummary
from .face_edit import editor_operators, run_face_edit


def build_operators(config: SwapJobConfig) -> list[Operator]:
    validate_swap(config)
    if config.mode == "reenact":
        return animate.build_operators(config.reenact_config())
    return editor_operators(SwapFace, config)


def run_swap(inputs: list[dict[str, Any]], config: SwapJobConfig, ctx: RunContext, **run_options: Any) -> RunSummary:
    return run_face_edit("swap", build_operators(config), inputs, config, ctx, **run_options)


__all__ = ["build_operators", "run_swap"]

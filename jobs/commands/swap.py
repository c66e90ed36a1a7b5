"""`facefab swap [MANIFEST] --out ROOT`: a source face on the faces of videos.

MANIFEST is a Parquet or CSV table (local or s3://) with the columns video_uri and reference_uri (the
source face: a portrait with one face), optionally job_id and out_name (other columns are kept); or give
one pair with --video and --source. Each row yields ROOT/outputs/<out_name or row id>.mp4: the video at its
own size, fps and length with its sound, every face track (--track all, the default) or the chosen one
(largest | central | N) replaced by the source's face, which follows the video face's pose and expression;
tagged synthetic and watermarked. --image (or a manifest row whose video_uri is an image) swaps the faces of
a still: ROOT/outputs/<name>.png. --mode reenact instead moves the source portrait itself like the video's
largest face (its pose and expression; the whole portrait, at its own size, with the video's frame rate,
length and sound): what `facefab animate --driving VIDEO --paste-back` does. A source with no face or several
faces (without --face-index), or an unreadable file, fails its row with the reason. Rerunning the same command
on the same ROOT resumes.

The weight-free mesh swap runs (models/swap/weightfree.py): the source's face shape with the video face's
pose and expression, its texture warped per mesh triangle, relit and colour-matched, blended inside the
face's outline (--swap.* settings). --model face-adapter --checkpoint DIR (or $FACEFAB_CHECKPOINT_FACE_ADAPTER
with --model auto) runs Face-Adapter on the aligned face crops, in both modes (weights from `facefab train
face-adapter`).
"""

from __future__ import annotations

import argparse

from .face_edit import add_face_edit_parser, run_face_edit_command, stage_operators as face_edit_operators

HELP = "put a source face on the faces of videos (manifest of video/source pairs)"


def add_parser(sub) -> None:
    from facefab.operators.swap import SwapJobConfig

    add_face_edit_parser(sub, "swap", HELP, __doc__, SwapJobConfig, "--source",
                         "the face to put on the video's faces (one face)", run)


def stage_operators(args: argparse.Namespace) -> list:
    """The operators the run hands to the engine (what `facefab run --dry-run` plans)."""
    from facefab.operators.swap import SwapJobConfig
    from facefab.pipelines.swap import build_operators

    return face_edit_operators(args, SwapJobConfig, build_operators)


def run(args: argparse.Namespace) -> int:
    from facefab.operators.swap import SwapJobConfig
    from facefab.pipelines.swap import build_operators, run_swap

    return run_face_edit_command(args, "swap", SwapJobConfig, build_operators, run_swap, args.source, "--source",
                                 still_error=_still_error)


def _still_error(config) -> str | None:
    return "--mode reenact follows the face of a video; give --video" if config.mode == "reenact" else None

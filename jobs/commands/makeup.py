"""`facefab makeup [MANIFEST] --out ROOT`: one reference face's makeup on the faces of videos.

MANIFEST is a Parquet or CSV table (local or s3://) with the columns video_uri and reference_uri (the
made-up face, a portrait with one face), optionally job_id and out_name (other columns are kept); or give
one pair with --video and --reference. Each row yields ROOT/outputs/<out_name or row id>.mp4: the source
video at its own size, fps and length with its sound, every face track (--track all, the default) or the
chosen one (largest | central | N) wearing the reference's lip colour, skin tone, eye shadow and brow
colour (--makeup.regions lips,skin,eyes,brows), --makeup.strength 0..1 blending it; tagged synthetic and
watermarked. --image (or a manifest row whose video_uri is an image) makes up a still: ROOT/outputs/<name>.png,
tagged (PNG text chunks) and signed when a C2PA credential is configured. A reference with no face or several
faces (without --face-index), or an unreadable file, fails its row with the reason. Rerunning the same command
on the same ROOT resumes.

Without a checkpoint the weight-free region colour transfer runs (models/makeup/weightfree.py); --model
beautyrec --checkpoint DIR (or $FACEFAB_CHECKPOINT_BEAUTYREC with --model auto) runs BeautyREC on the aligned
face crops (make weights with `facefab train beautyrec` or `facefab convert beautyrec BeautyREC.pt DIR`).
"""

from __future__ import annotations

import argparse

from .face_edit import add_face_edit_parser, run_face_edit_command, stage_operators as face_edit_operators

HELP = "apply a reference face's makeup to the faces of videos (manifest of video/reference pairs)"


def add_parser(sub) -> None:
    from facefab.operators.makeup import MakeupJobConfig

    add_face_edit_parser(sub, "makeup", HELP, __doc__, MakeupJobConfig, "--reference",
                         "the face whose makeup to apply (one face)", run)


def stage_operators(args: argparse.Namespace) -> list:
    """The operators the run hands to the engine (what `facefab run --dry-run` plans)."""
    from facefab.operators.makeup import MakeupJobConfig
    from facefab.pipelines.makeup import build_operators

    return face_edit_operators(args, MakeupJobConfig, build_operators)


def run(args: argparse.Namespace) -> int:
    from facefab.operators.makeup import MakeupJobConfig
    from facefab.pipelines.makeup import build_operators, run_makeup

    return run_face_edit_command(args, "makeup", MakeupJobConfig, build_operators, run_makeup, args.reference,
                                 "--reference")

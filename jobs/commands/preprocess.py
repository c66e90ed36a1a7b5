"""`facefab preprocess INPUT... --out ROOT`: build a face-video dataset from raw videos.

INPUT is a folder, a glob, a video file, or a Parquet/CSV manifest with a `video_uri` column,
local or s3://. Rerunning the same command on the same ROOT resumes.
"""

from __future__ import annotations

import argparse

from ..config import add_config_flags, build_config

HELP = ("raw videos -> clips, face tracks, landmarks, pose, masks, audio features, flow, "
        "quality scores")


def add_parser(sub) -> None:
    from facefab.pipelines.preprocess import PreprocessConfig

    from ..cli import add_run_args

    p = sub.add_parser("preprocess", help=HELP, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    add_run_args(p)
    add_config_flags(p, PreprocessConfig)
    p.set_defaults(func=run)


def stage_operators(args: argparse.Namespace) -> list:
    """The operators the run hands to the engine (what `facefab run --dry-run` plans)."""
    from facefab.pipelines.preprocess import PreprocessConfig, preprocess_operators

    return preprocess_operators(build_config(PreprocessConfig, args, args.config))


def run(args: argparse.Namespace) -> int:
    from facefab.manifests.storage import storage_options_from_env
    from facefab.pipelines.inputs import video_inputs
    from facefab.pipelines.preprocess import PreprocessConfig, build_operators, run_preprocess

    from ..cli import report_run, run_context, run_options

    config = build_config(PreprocessConfig, args, args.config)
    build_operators(config)  # fail fast on a bad --operators subset, before Ray starts
    opts = storage_options_from_env(args.storage_options)
    inputs = video_inputs(args.inputs, opts)
    summary = run_preprocess(inputs, config, run_context(args, opts), **run_options(args))
    return report_run(summary)

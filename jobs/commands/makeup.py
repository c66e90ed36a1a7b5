"""`facefab makeup [MANIFEST] --out ROOT`: one reference face's makeup on the faces of videos.

MANIFEST is a Parquet or CSV table (local or s3://) with the columns video_uri and reference_uri (the
made-up face, a portrait with one face), optionally job_id and out_name (other columns are kept); or give
one pair with --video and --reference. Each row yields ROOT/outputs/<out_name or row id>.mp4: the source
video at its own size, fps and length with its sound, every face track (--track all, the default) or the
chosen one (largest | central | N) wearing the reference's lip colour, skin tone, eye shadow and brow
colour (--makeup.regions lips,skin,eyes,brows), --makeup.strength 0..1 blending it; tagged synthetic and
watermarked. A reference with no face or several faces (without --face-index), or an unreadable file,
fails its row with the reason. Rerunning the same command on the same ROOT resumes.

The weight-free region colour transfer runs (models/makeup/weightfree.py); BeautyREC is not built yet.
"""

from __future__ import annotations

import argparse

from ..config import add_config_flags, build_config

HELP = "apply a reference face's makeup to the faces of videos (manifest of video/reference pairs)"


def add_parser(sub) -> None:
    from facefab.operators.makeup import MakeupJobConfig

    from ..cli import add_run_args

    p = sub.add_parser("makeup", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", nargs="?", metavar="MANIFEST", help="Parquet/CSV with video_uri, reference_uri")
    p.add_argument("--video", default=None, help="one source video (with --reference, instead of a MANIFEST)")
    p.add_argument("--reference", default=None, help="the face whose makeup to apply (one face)")
    add_run_args(p)
    add_config_flags(p, MakeupJobConfig)
    p.set_defaults(func=run)


def stage_operators(args: argparse.Namespace) -> list:
    """The operators the run hands to the engine (what `facefab run --dry-run` plans)."""
    from facefab.operators.makeup import MakeupJobConfig
    from facefab.pipelines.makeup import build_operators

    return build_operators(build_config(MakeupJobConfig, args, args.config))


def run(args: argparse.Namespace) -> int:
    from facefab.manifests.storage import join_uri, storage_options_from_env
    from facefab.operators.makeup import MakeupJobConfig
    from facefab.pipelines.makeup import build_operators, makeup_inputs, run_makeup

    from ..cli import report_run, run_context, run_options

    config = build_config(MakeupJobConfig, args, args.config)
    build_operators(config)  # fail fast on a bad setting, before Ray starts
    opts = storage_options_from_env(args.storage_options)
    inputs = makeup_inputs(args.manifest, args.video, args.reference, opts)
    summary = run_makeup(inputs, config, run_context(args, opts), **run_options(args))
    return report_run(summary, outputs=join_uri(args.out, "outputs"))

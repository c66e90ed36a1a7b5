"""`facefab swap [MANIFEST] --out ROOT`: a source face on the faces of videos.

MANIFEST is a Parquet or CSV table (local or s3://) with the columns video_uri and reference_uri (the
source face: a portrait with one face), optionally job_id and out_name (other columns are kept); or give
one pair with --video and --source. Each row yields ROOT/outputs/<out_name or row id>.mp4: the video at its
own size, fps and length with its sound, every face track (--track all, the default) or the chosen one
(largest | central | N) replaced by the source's face, which follows the video face's pose and expression;
tagged synthetic and watermarked. A source with no face or several faces (without --face-index), or an
unreadable file, fails its row with the reason. Rerunning the same command on the same ROOT resumes.

The weight-free mesh swap runs (models/swap/weightfree.py): the source's face shape with the video face's
pose and expression, its texture warped per mesh triangle, relit and colour-matched, blended inside the
face's outline (--swap.* settings). Face-Adapter is not built yet.
"""

from __future__ import annotations

import argparse

from ..config import add_config_flags, build_config

HELP = "put a source face on the faces of videos (manifest of video/source pairs)"


def add_parser(sub) -> None:
    from facefab.operators.swap import SwapJobConfig

    from ..cli import add_run_args

    p = sub.add_parser("swap", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", nargs="?", metavar="MANIFEST", help="Parquet/CSV with video_uri, reference_uri")
    p.add_argument("--video", default=None, help="one target video (with --source, instead of a MANIFEST)")
    p.add_argument("--source", default=None, help="the face to put on the video's faces (one face)")
    add_run_args(p)
    add_config_flags(p, SwapJobConfig)
    p.set_defaults(func=run)


def stage_operators(args: argparse.Namespace) -> list:
    """The operators the run hands to the engine (what `facefab run --dry-run` plans)."""
    from facefab.operators.swap import SwapJobConfig
    from facefab.pipelines.swap import build_operators

    return build_operators(build_config(SwapJobConfig, args, args.config))


def run(args: argparse.Namespace) -> int:
    from facefab.manifests.storage import join_uri, storage_options_from_env
    from facefab.operators.swap import SwapJobConfig
    from facefab.pipelines.swap import build_operators, run_swap, swap_inputs

    from ..cli import report_run, run_context, run_options

    config = build_config(SwapJobConfig, args, args.config)
    build_operators(config)  # fail fast on a bad setting, before Ray starts
    opts = storage_options_from_env(args.storage_options)
    inputs = swap_inputs(args.manifest, args.video, args.source, opts)
    summary = run_swap(inputs, config, run_context(args, opts), **run_options(args))
    return report_run(summary, outputs=join_uri(args.out, "outputs"))

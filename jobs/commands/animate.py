"""`facefab animate [MANIFEST] --out ROOT`: portraits + speech tracks -> talking-head videos.

MANIFEST is a Parquet or CSV table (local or s3://) with the columns reference_uri (a portrait
image) and audio_uri (speech), and optionally pose_uri (a driving video or a yaw/pitch/roll table to
follow), job_id and out_name (other columns are kept); or give one pair with --reference and
--audio (and --pose). Each row yields ROOT/outputs/<out_name or row id>.mp4:
a square head crop (--size, default 512; --paste-back: the whole portrait) at --fps (25) for
exactly the audio's length, the speech muxed in (AAC), tagged synthetic and watermarked. The
manifest (ROOT/manifest/, kind "animate") records status, error and timings; ROOT/summary.json the
run. Rerunning the same command on the same ROOT resumes.

Without a checkpoint the weight-free talking photo runs (mouth shaped from the speech, blinks, a
slow head sway or the pose to follow). --model hallo | v-express | gaia --checkpoint DIR (local or
s3://; from `facefab train` or `facefab convert`) runs that neural pipeline on the portrait's
aligned face crop; --checkpoint alone picks the system its model_index.json names. A portrait with
several faces needs --face-index.
"""

from __future__ import annotations

import argparse

from ..config import add_config_flags, build_config

HELP = "animate portraits with speech (manifest of reference/audio pairs)"


def add_parser(sub) -> None:
    from facefab.operators.animate import AnimateConfig

    from ..cli import add_run_args

    p = sub.add_parser("animate", help=HELP,
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", nargs="?", metavar="MANIFEST", help="Parquet/CSV with reference_uri, audio_uri")
    p.add_argument("--reference", default=None, help="one portrait image (with --audio, instead of a MANIFEST)")
    p.add_argument("--audio", default=None, help="its speech track")
    p.add_argument("--pose", default=None, help="a driving video or pose table to follow (with --reference)")
    add_run_args(p)
    add_config_flags(p, AnimateConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facefab.manifests.storage import join_uri, storage_options_from_env
    from facefab.operators.animate import AnimateConfig
    from facefab.pipelines.animate import animate_inputs, build_operators, run_animate

    from ..cli import report_run, run_context, run_options

    config = build_config(AnimateConfig, args, args.config)
    opts = storage_options_from_env(args.storage_options)
    build_operators(config, opts)  # fail fast on a bad setting or missing weights, before Ray starts
    inputs = animate_inputs(args.manifest, args.reference, args.audio, opts, pose=args.pose)
    summary = run_animate(inputs, config, run_context(args, opts), **run_options(args))
    return report_run(summary, outputs=join_uri(args.out, "outputs"))

"""`facefab animate [MANIFEST] --out ROOT`: portraits + speech tracks -> talking-head videos, or
portraits + driving videos -> the portrait moved like the driving face (reenactment).

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

From a driving video: --reference portrait.jpg --driving drive.mp4, or a MANIFEST with reference_uri
and video_uri. The output has the driving video's frame rate and length (--max-duration cuts it) and its
audio. The driving face's motion relative to its first frame moves the portrait, which keeps its own face
shape (--absolute or --relative false: the driving face's absolute shape). Without a checkpoint the weight-free
mesh-driven reenactment runs; --model face-vid2vid --checkpoint DIR (from `facefab train facevid2vid`)
runs face-vid2vid. Settings only the driving-video path has: --relative, --motion-*.

Along trajectories (MOFA-Video's control): --reference portrait.jpg --trajectories FILE, or a MANIFEST with
reference_uri and trajectories_uri. FILE is JSON {"tracks": [[[x, y] or null, ...], ...]} or a Parquet/CSV
table (track, frame, x, y) in the portrait's pixels, or a preprocess flow artifact (.npz, the flow stage's
keypoint trajectories of another face, placed through the portrait's alignment), or a preprocess ROOT#CLIP
(the flow trajectories of that run's track CLIP: a row id, clip id or source video name; a bare ROOT when
it has one track). The weight-free path interpolates the tracks into a dense motion field (thin-plate
spline) and warps; the output runs at --fps (default: the clip's rate, else 25) for the tracks' length.
"""

from __future__ import annotations

import argparse

from ..config import add_config_flags, build_config

HELP = "animate portraits with speech (manifest of reference/audio pairs)"


def add_parser(sub) -> None:
    from facefab.operators.animate import AnimateConfig
    from facefab.operators.reenact import ReenactJobConfig, TrajectoryJobConfig

    from ..cli import add_run_args
    from ..config import walk_fields

    p = sub.add_parser("animate", help=HELP,
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", nargs="?", metavar="MANIFEST", help="Parquet/CSV with reference_uri, audio_uri")
    p.add_argument("--reference", default=None, help="one portrait image (with --audio, instead of a MANIFEST)")
    p.add_argument("--audio", default=None, help="its speech track")
    p.add_argument("--pose", default=None, help="a driving video or pose table to follow (with --reference)")
    p.add_argument("--driving", default=None, help="a driving video to reenact (with --reference, instead of --audio)")
    p.add_argument("--trajectories", default=None, metavar="FILE",
                   help="point tracks to move the portrait along: JSON, Parquet/CSV (track, frame, x, y) or a "
                        "preprocess flow artifact (.npz) or a preprocess ROOT#CLIP")
    p.add_argument("--absolute", action="store_true",
                   help="with --driving: copy the driving face's absolute shape (the same as --relative false)")
    add_run_args(p)
    add_config_flags(p, AnimateConfig)
    shared = {name for name, *_ in walk_fields(AnimateConfig)}
    add_config_flags(p, ReenactJobConfig, skip=shared)
    shared |= {name for name, *_ in walk_fields(ReenactJobConfig)}
    add_config_flags(p, TrajectoryJobConfig, skip=shared)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facefab.manifests.storage import join_uri, storage_options_from_env
    from facefab.pipelines.animate import animate_inputs, build_operators, config_class, run_animate

    from ..cli import report_run, run_context, run_options

    opts = storage_options_from_env(args.storage_options)
    inputs = animate_inputs(args.manifest, args.reference, args.audio, opts, pose=args.pose, driving=args.driving,
                            trajectories=args.trajectories)
    if args.absolute:
        if "video_uri" not in inputs[0]:
            raise ValueError("--absolute goes with a driving video (--driving or a manifest's video_uri)")
        setattr(args, "cfg:relative", False)
    config = build_config(config_class(inputs), args, args.config)
    build_operators(config, opts)  # fail fast on a bad setting or missing weights, before Ray starts
    summary = run_animate(inputs, config, run_context(args, opts), **run_options(args))
    return report_run(summary, outputs=join_uri(args.out, "outputs"))

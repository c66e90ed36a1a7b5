"""`facefab dub [MANIFEST] --out ROOT`: lip-sync talking videos to new audio tracks.

MANIFEST is a Parquet or CSV table (local or s3://) with the columns video_uri and audio_uri, and
optionally job_id and out_name (other columns are kept); or give one pair with --video and
--audio. Each row yields ROOT/outputs/<out_name or row id>.mp4: the source video at its own size
and fps with the new audio muxed in (AAC) and the lips re-synced to it, tagged synthetic and
watermarked. The manifest (ROOT/manifest/, kind "dub") records status, error, model and scores;
ROOT/summary.json the run. Rerunning the same command on the same ROOT resumes.

Without a checkpoint the weight-free default runs (Video-Rewrite style: mouths from the video's own
frames, chosen for the new audio); --checkpoint DIR (or $FACEFAB_CHECKPOINT_MYTALK) runs MyTalk.
Audio longer than the video extends it (--length-mode pingpong|loop|hold|trim); shorter trims it.

The video's analysis (speaking face track, mesh, alignment, its own speech) is done once per video and
window and cached under ROOT/cache/dub_analysis/, so dubbing one video into several languages (rows with
the same video_uri) analyses it once. --from-preprocess PREP_ROOT takes the speaking face of videos a
`facefab preprocess` run has from its face tracks instead (the row's `analysis` column says which:
preprocess | cache | analysed).
"""

from __future__ import annotations

import argparse

from ..config import add_config_flags, build_config

HELP = "lip-sync videos to new audio tracks (manifest of video/audio pairs)"


def add_parser(sub) -> None:
    from facefab.operators.dub import DubConfig

    from ..cli import add_run_args

    p = sub.add_parser("dub", help=HELP,
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", nargs="?", metavar="MANIFEST", help="Parquet/CSV with video_uri, audio_uri")
    p.add_argument("--video", default=None, help="one source video (with --audio, instead of a MANIFEST)")
    p.add_argument("--audio", default=None, help="its new audio track")
    add_run_args(p)
    add_config_flags(p, DubConfig)
    p.set_defaults(func=run)


def stage_operators(args: argparse.Namespace) -> list:
    """The operators the run hands to the engine (what `facefab run --dry-run` plans)."""
    from facefab.operators.dub import DubConfig
    from facefab.pipelines.dub import build_operators

    return build_operators(build_config(DubConfig, args, args.config))


def run(args: argparse.Namespace) -> int:
    from facefab.manifests.storage import join_uri, storage_options_from_env
    from facefab.operators.dub import DubConfig
    from facefab.pipelines.dub import build_operators, dub_inputs, run_dub

    from ..cli import report_run, run_context, run_options

    config = build_config(DubConfig, args, args.config)
    build_operators(config)  # fail fast on a bad setting, before Ray starts
    opts = storage_options_from_env(args.storage_options)
    inputs = dub_inputs(args.manifest, args.video, args.audio, opts)
    summary = run_dub(inputs, config, run_context(args, opts), **run_options(args))
    return report_run(summary, outputs=join_uri(args.out, 'outputs'))

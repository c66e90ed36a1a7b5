"""What `facefab makeup` and `facefab swap` share: the input flags (a MANIFEST, or one --video or --image
with its reference face) and the run."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import add_config_flags, build_config


def add_face_edit_parser(sub, name: str, help: str, doc: str, config_class: type, reference_flag: str,
                         reference_help: str, func) -> argparse.ArgumentParser:
    from ..cli import add_run_args

    p = sub.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", nargs="?", metavar="MANIFEST", help="Parquet/CSV with video_uri, reference_uri")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--video", default=None, help=f"one video (with {reference_flag}, instead of a MANIFEST)")
    target.add_argument("--image", default=None, help="one still image instead of a video (a PNG comes out)")
    p.add_argument(reference_flag, default=None, help=reference_help)
    add_run_args(p)
    add_config_flags(p, config_class)
    p.set_defaults(func=func)
    return p


def run_face_edit_command(args: argparse.Namespace, kind: str, config_class: type, build_operators, run,
                          reference: str | None, reference_flag: str, still_error=lambda config: None) -> int:
    from facefab.manifests.storage import join_uri, storage_options_from_env
    from facefab.pipelines.face_edit import face_edit_inputs

    from ..cli import report_run, run_context, run_options

    config = build_config(config_class, args, args.config)
    build_operators(config)  # fail fast on a bad setting, before Ray starts
    if args.image and still_error(config):
        raise ValueError(f"--image: {still_error(config)}")
    opts = storage_options_from_env(args.storage_options)
    inputs = face_edit_inputs(kind, args.manifest, args.video or args.image, reference, opts,
                              reference_flag=reference_flag, target_flag="--video/--image")
    summary = run(inputs, config, run_context(args, opts), **run_options(args))
    return report_run(summary, outputs=join_uri(args.out, "outputs"))


def stage_operators(args: argparse.Namespace, config_class: type, build_operators) -> list[Any]:
    """The operators the run hands to the engine (what `facefab run --dry-run` plans)."""
    return build_operators(build_config(config_class, args, args.config))

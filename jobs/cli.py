"""`facefab` command line.

Every job subcommand takes --out ROOT (a local path or any fsspec URI such as s3://bucket/prefix),
--storage-options JSON (or FACEFAB_STORAGE_OPTIONS / AWS_* / FACEFAB_S3_ENDPOINT in the
environment) and --config FILE.yaml, whose every field can also be set by its own flag.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from importlib.metadata import PackageNotFoundError, version

# name -> module exposing HELP, add_parser(subparsers) and run(args) -> int. The modules import
# their heavy dependencies (torch, diffusers, OpenCV) inside add_parser/run, not at import time.
COMMANDS = {
    "preprocess": "facefab.jobs.commands.preprocess",
    "dub": "facefab.jobs.commands.dub",
    "train": "facefab.jobs.commands.train",
    "models": "facefab.jobs.commands.models",
    "run": "facefab.jobs.commands.run",
    "verify": "facefab.jobs.commands.verify",
    "report": "facefab.jobs.commands.report",
    "status": "facefab.jobs.commands.status",
}


def _version() -> str:
    try:
        return version("facefab")
    except PackageNotFoundError:
        return "0+unknown"


def add_storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help='fsspec storage options, e.g. \'{"endpoint_url": "http://127.0.0.1:9000", '
                             '"key": "...", "secret": "..."}\'; default from FACEFAB_STORAGE_OPTIONS, '
                             "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and FACEFAB_S3_ENDPOINT")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The options every job subcommand shares."""
    parser.add_argument("--out", required=True, metavar="ROOT", help="output root: local path or s3://bucket/prefix")
    add_storage_args(parser)
    parser.add_argument("--config", default=None, metavar="FILE", help="YAML config; flags override its fields")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="skip inputs already done in ROOT's manifest and retry failed ones (default: on)")
    parser.add_argument("--max-attempts", type=int, default=3, help="stop retrying an input after this many failures")
    parser.add_argument("--limit", type=int, default=None, help="process at most this many inputs")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `only`, every other command gets a listing-only stub, so that
    `facefab status ...` or `facefab --help` does not import torch and every operator."""
    parser = argparse.ArgumentParser(prog="facefab", description="Batch face-video production on Ray: "
                                     "preprocess catalogs, generate, train.")
    parser.add_argument("--version", action="version", version=f"facefab {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        if only is None or name == only:
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def _command_of(argv: list[str]) -> str:
    """The subcommand named on the command line ("" when none), found without parsing the rest."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_of(argv))
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # configuration and input mistakes: one clear line, no traceback
        print(f"facefab {args.command}: error: {exc}", file=sys.stderr)
        return 2


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    sys.exit(main())

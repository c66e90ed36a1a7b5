"""`facefab report ROOT`: a self-contained HTML report (contact sheets, score histograms, errors)."""

from __future__ import annotations

import argparse

HELP = "HTML report of a preprocess root"


def add_parser(sub) -> None:
    from ..cli import add_storage_args

    p = sub.add_parser("report", help=HELP, description=__doc__)
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--html", default=None, metavar="FILE", help="where to write it (default: ROOT/report.html)")
    p.add_argument("--max-clips", type=int, default=24, help="contact sheets for at most this many clips")
    add_storage_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facefab.manifests.storage import atomic_write_bytes, join_uri, storage_options_from_env
    from facefab.pipelines.report import build_report

    opts = storage_options_from_env(args.storage_options)
    target = args.html or join_uri(args.root, "report.html")
    page = build_report(args.root, opts, max_clips=args.max_clips)
    atomic_write_bytes(target, page.encode(), opts if "://" in target else None)
    print(f"wrote {target}")
    return 0

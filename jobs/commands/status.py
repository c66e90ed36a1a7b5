"""`facefab status ROOT`: what a run root holds: counts by status, errors, the last summary."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from facefab.manifests.io import read_manifest
from facefab.manifests.storage import exists, join_uri, read_bytes, storage_options_from_env

HELP = "counts by status and the errors of a run root"


def add_parser(sub) -> None:
    from ..cli import add_storage_args

    p = sub.add_parser("status", help=HELP,
                       description=__doc__)
    p.add_argument("root", metavar="ROOT")
    add_storage_args(p)
    p.add_argument("--errors", type=int, default=20, help="how many failed rows to list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = storage_options_from_env(args.storage_options)
    table = read_manifest(args.root, opts)
    if table.num_rows == 0:
        print(f"{args.root}: no manifest yet")
        return 1
    counts = Counter(table["status"].to_pylist())
    print(f"{args.root}: {table.num_rows} rows: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    failed = [r for r in table.select(["id", "status", "error"]).to_pylist() if r["status"] != "ok"]
    for row in failed[: args.errors]:
        err = row["error"] or {}
        print(f"  {row['status']:8} {row['id']}  [{err.get('operator')}] {err.get('type')}: {err.get('message')}")
    summary_uri = join_uri(args.root, "summary.json")
    if exists(summary_uri, opts):
        summary = json.loads(read_bytes(summary_uri, opts))
        print(f"last run {summary['run_id']}: {summary['wall_seconds']} s, "
              f"{summary['processed_inputs']}/{summary['inputs']} inputs processed")
    return 0

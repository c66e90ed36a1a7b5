"""`facefab run JOB.yaml`: run a declarative job spec (preprocess a catalog, dub a manifest, train a system).

The spec (see facefab.jobs.spec) expands to one `facefab <command> ...` argv, which runs in this
process exactly as if typed: locally Ray starts on this machine, with RAY_ADDRESS set (as inside a
KubeRay RayJob) the job joins that cluster. ${VAR} in the spec comes from the environment; relative
paths are relative to the spec file's folder.

Examples:
  facefab run jobs/specs/local_preprocess.yaml --dry-run     # print the command line, run nothing
  facefab run jobs/specs/local_preprocess.yaml
  FACEFAB_BUCKET=my-bucket RAY_ADDRESS=ray://head:10001 facefab run jobs/specs/preprocess.yaml
"""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = "run a job spec (YAML): preprocess, dub or train"


def add_parser(sub) -> None:
    p = sub.add_parser("run", help=HELP,
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="JOB.yaml", help="job spec file")
    p.add_argument("--dry-run", action="store_true",
                   help="print the facefab command line the spec expands to (and its --config), run nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..spec import CONFIG_PLACEHOLDER, config_yaml, load_spec, materialized_argv, redact_argv, spec_to_argv

    spec = load_spec(args.spec)  # ValueError / FileNotFoundError: one clear line from cli.main
    verbose = ["-v"] * int(getattr(args, "verbose", 0) or 0)
    if args.dry_run:
        print(shlex.join(["facefab", *verbose, *redact_argv(spec_to_argv(spec))]))
        if spec.config:
            print(f"# {CONFIG_PLACEHOLDER}: written from the spec's `config` to a temporary file when it runs")
            print(config_yaml(spec, redacted=True), end="")
        return 0

    from ..cli import main

    with materialized_argv(spec) as argv:
        print(f"facefab run {args.spec}: facefab {shlex.join([*verbose, *redact_argv(argv)])}",
              file=sys.stderr, flush=True)
        try:
            return main([*verbose, *argv])
        except SystemExit as exc:  # argparse rejected the expanded argv
            return exc.code if isinstance(exc.code, int) else 2

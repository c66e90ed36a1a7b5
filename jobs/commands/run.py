"""`facefab run JOB.yaml`: run a declarative job spec (preprocess a catalog, dub a manifest, train a system).

The spec (see facefab.jobs.spec) expands to one `facefab <command> ...` argv, which runs in this
process exactly as if typed: locally Ray starts on this machine, with RAY_ADDRESS set (as inside a
KubeRay RayJob) the job joins that cluster. ${VAR} in the spec comes from the environment; relative
paths are relative to the spec file's folder.

`--dry-run` prints the command line and the run's plan: per stage the workers (tasks, an actor
pool's size) and what each asks Ray for. Locally pools have a fixed size fitted to this machine; on a
cluster ($RAY_ADDRESS set, or --cluster) they start small and grow with the load.

Examples:
  facefab run jobs/specs/local_preprocess.yaml --dry-run     # print the command line and plan, run nothing
  facefab run jobs/specs/preprocess.yaml --dry-run --cluster # the plan inside its RayJob
  facefab run jobs/specs/local_preprocess.yaml
  FACEFAB_BUCKET=my-bucket RAY_ADDRESS=ray://head:10001 facefab run jobs/specs/preprocess.yaml
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

HELP = "run a job spec (YAML): preprocess, dub or train"


def add_parser(sub) -> None:
    p = sub.add_parser("run", help=HELP,
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="JOB.yaml", help="job spec file")
    p.add_argument("--dry-run", action="store_true",
                   help="print the facefab command line the spec expands to (and its --config) and the run's "
                        "plan, run nothing")
    p.add_argument("--cluster", action="store_true",
                   help="with --dry-run: plan for a cluster (as inside a RayJob) even without $RAY_ADDRESS")
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
        from facefab.operators.runtime import joins_cluster

        for line in plan_lines(spec, cluster=args.cluster or joins_cluster()):
            print(f"# {line}")
        return 0

    from ..cli import main

    with materialized_argv(spec) as argv:
        print(f"facefab run {args.spec}: facefab {shlex.join([*verbose, *redact_argv(argv)])}",
              file=sys.stderr, flush=True)
        try:
            return main([*verbose, *argv])
        except SystemExit as exc:  # argparse rejected the expanded argv
            return exc.code if isinstance(exc.code, int) else 2


def job_plan(spec, cluster: bool):
    """(placement, StagePlans) of the run `spec` stands for, computed as the run computes them
    (`facefab.pipelines.pools`), without starting Ray; placement is None for training."""
    from facefab.pipelines.pools import dry_run_placement, plan_pools

    from ..cli import COMMANDS, build_parser
    from ..spec import materialized_argv

    with materialized_argv(spec) as argv:  # the --config file the stages are built from
        args = build_parser(only=spec.command).parse_args(argv)
        command = importlib.import_module(COMMANDS[spec.command])
        if spec.kind == "train":
            return None, command.stage_plan(args)
        where = dry_run_placement(cluster, args.gpus)
        return where, plan_pools(command.stage_operators(args), where)


def plan_lines(spec, cluster: bool) -> list[str]:
    from facefab.pipelines.pools import describe

    where, stages = job_plan(spec, cluster)
    head = [f"plan {describe(where)}:"] if where else ["plan:"]
    return head + [f"  {stage.line()}" for stage in stages]

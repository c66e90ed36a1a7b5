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
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version

EXIT_CODES = """exit codes (every job command):
  0  the run completed and every input is accounted for in the manifest
     (failed rows are recorded with their error, not fatal)
  3  completed, but the failed fraction of this run's inputs is above --max-failed-fraction
  2  usage or configuration error
  1  the run itself crashed"""

# name -> module exposing HELP, add_parser(subparsers) and run(args) -> int. The modules import
# their heavy dependencies (torch, diffusers, OpenCV) inside add_parser/run, not at import time.
COMMANDS = {
    "preprocess": "facefab.jobs.commands.preprocess",
    "dub": "facefab.jobs.commands.dub",
    "animate": "facefab.jobs.commands.animate",
    "makeup": "facefab.jobs.commands.makeup",
    "swap": "facefab.jobs.commands.swap",
    "train": "facefab.jobs.commands.train",
    "convert": "facefab.jobs.commands.convert",
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
    parser.add_argument("--max-failed-fraction", type=_fraction, default=0.1, metavar="F",
                        help="exit 3 when more than this fraction of the run's inputs failed (default 0.1)")
    parser.add_argument("--limit", type=int, default=None, help="process at most this many inputs")
    parser.add_argument("--allow-input-roots", default=None, metavar="ROOT[,ROOT]",
                        help="read inputs only under these roots (local folders, s3://bucket/prefix, "
                             "https://host/); default: any local or object-store input, no http(s)")
    parser.add_argument("--commit-seconds", type=float, default=10.0, metavar="S",
                        help="commit finished rows to the manifest at least this often (default 10)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    parser.add_argument("--gpus", action=argparse.BooleanOptionalAction, default=None,
                        help="run the stages that use GPUs on GPUs (default: locally when this machine has GPUs; "
                             "on a cluster only with --gpus, which makes its autoscaler add GPU nodes)")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def run_options(args: argparse.Namespace) -> dict:
    """The PipelineRun options every job command takes from its flags."""
    return {"resume": args.resume, "max_attempts": args.max_attempts, "limit": args.limit,
            "progress": args.progress, "max_failed_fraction": args.max_failed_fraction,
            "commit_seconds": args.commit_seconds, "gpus": args.gpus}


def report_run(summary, outputs: str | None = None, max_errors: int = 10) -> int:
    """Print a pipeline run's summary line and first errors; return its exit code."""
    print(summary.line())
    if outputs:
        print(f"outputs: {outputs}")
    for err in summary.errors[:max_errors]:
        print(f"  {err.get('status', 'failed')} {err['id']}: [{err.get('operator')}] {err.get('type')}: "
              f"{err.get('message')}")
    if len(summary.errors) > max_errors:
        print(f"  ... {len(summary.errors) - max_errors} more: facefab status {summary.out_root}")
    if summary.logs:
        print(f"logs: {summary.logs}")
    return summary.exit_code


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `only`, every other command gets a listing-only stub, so that
    `facefab status ...` or `facefab --help` does not import torch and every operator."""
    parser = argparse.ArgumentParser(prog="facefab", description="Batch face-video production on Ray: "
                                     "preprocess catalogs, generate, train.", epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"facefab {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging, with Ray's worker output and native library messages live on the "
                             "console instead of only in the log folder the summary names (-vv for debug)")
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
    if args.verbose:
        os.environ["FACEFAB_VERBOSE"] = "1"  # Ray workers' output and native logs live on the console
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 2
    from facefab.operators.runtime import sigterm_as_interrupt

    previous = sigterm_as_interrupt()  # a scheduler's stop ends the run like Ctrl-C: commit, then exit 1
    try:
        return _run_command(args)
    finally:
        sigterm_as_interrupt(False)
        signal.signal(signal.SIGTERM, previous)


def run_context(args: argparse.Namespace, storage_options: dict):
    """The RunContext of a job command: ROOT, store options and the input allow-list."""
    from facefab.operators.base import RunContext

    roots = tuple(r for r in (args.allow_input_roots or "").split(",") if r) or None
    return RunContext(args.out, storage_options, allowed_input_roots=roots)


def _run_command(args: argparse.Namespace) -> int:
    from facefab.manifests.storage import StoreFull, StoreUnreachable, absolute_uri

    for name in ("out", "data"):  # manifests store absolute URIs: workers run in other directories
        if isinstance(getattr(args, name, None), str):
            setattr(args, name, absolute_uri(getattr(args, name)))
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # configuration and input mistakes: one clear line, no traceback
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"facefab {args.command}: error: {message}", file=sys.stderr)
        return 2
    except StoreFull as exc:
        print(f"facefab {args.command}: {exc}; rows committed before it are kept, free some space and rerun "
              "the same command to resume", file=sys.stderr)
        return 1
    except StoreUnreachable as exc:
        print(f"facefab {args.command}: {exc}; rows committed before it are kept, rerun the same command when "
              "the store answers again", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"facefab {args.command}: interrupted; the rows finished so far are committed, rerun the same "
              "command to resume", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the run itself crashed: say so in one line, then the details
        logging.getLogger("facefab").debug("crash", exc_info=True)
        full = _disk_full_cause(exc)
        if full is not None:  # a full disk met outside the manifest writer (media, logs, Ray's spill)
            where = f" under {full.filename}" if getattr(full, "filename", None) else ""
            print(f"facefab {args.command}: the disk{where} is full: {full.strerror or full}; rows committed "
                  "before it are kept, free some space and rerun the same command to resume", file=sys.stderr)
            return 1
        print(f"facefab {args.command}: crashed: {type(exc).__name__}: {exc} (rerun with -vv for the traceback)",
              file=sys.stderr)
        return 1


def _disk_full_cause(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error in `exc`'s cause chain, if any."""
    from facefab.manifests.storage import is_disk_full

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if is_disk_full(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    sys.exit(main())

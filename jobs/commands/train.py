"""`facefab train SYSTEM --data ROOT --out CKPT_ROOT`: train a generator on preprocessed clips.

Ray Train runs --workers workers, each wrapping the model in DeepSpeed (ZeRO stage 2 by default,
--zero-stage / --offload / --deepspeed ds.json to change it; bf16 on GPU, fp32 + gloo on CPU),
fed by Ray Data from ROOT's manifests. Checkpoints go to CKPT_ROOT/<run name>/ every
--checkpoint-every steps (local or s3://); rerunning the same command resumes from the latest
one. At the end the model is exported to CKPT_ROOT/<run name>/export/ (what the generator
operator loads), next to summary.json and loss_curve.png. Systems that are parts of one pipeline
also merge their export into a shared CKPT_ROOT/<group>/ (MyTalk: CKPT_ROOT/mytalk/ gets motion/
from mytalk-motion and renderer/ from mytalk-render, + model_index.json), summary's group_export_uri.

Examples:
  facefab train facevid2vid --data out/demo --out ckpt --preset tiny --max-steps 200
  facefab train facevid2vid --data s3://bucket/data --out s3://bucket/ckpt --workers 8 --gpus-per-worker 1
  facefab train mytalk --data out/demo --out ckpt --preset tiny --workers 2   # both stages -> ckpt/mytalk/
  facefab train mytalk-motion --data out/demo --out ckpt --preset tiny        # one stage -> ckpt/mytalk/motion/
  facefab dub --video v.mp4 --audio a.wav --model mytalk --checkpoint ckpt/mytalk --out out/dub
"""

from __future__ import annotations

import argparse
import sys

from ..config import add_config_flags, build_config

HELP = "train a generator with Ray Train + DeepSpeed (resumable)"


def add_parser(sub) -> None:
    from facefab.training.config import TrainConfig

    p = sub.add_parser("train", help=HELP, description=__doc__, formatter_class=_HelpFormatter)
    _add_arguments(p, TrainConfig)
    p.set_defaults(func=run)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Names the training systems only when the help is shown: registering them imports torch."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest == "system":

            from facefab.training.catalog import trainable_names

            return "one of: " + ", ".join(trainable_names())
        return super()._get_help_string(action)


def _add_arguments(p: argparse.ArgumentParser, config_cls) -> None:
    from ..cli import add_storage_args

    p.add_argument("system", metavar="SYSTEM", help="a training system")
    p.add_argument("--data", required=True, metavar="ROOT", help="preprocess output root (local or s3://)")
    p.add_argument("--out", required=True, metavar="CKPT_ROOT", help="checkpoint root: local path or s3://bucket/prefix")
    add_storage_args(p)
    p.add_argument("--config", default=None, metavar="FILE", help="YAML config (TrainConfig fields); flags override it")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    add_config_flags(p, config_cls, skip={"system"})


def stage_plan(args: argparse.Namespace) -> list:
    """The run's Ray Train workers as `facefab run --dry-run` plans them (a fixed group)."""
    from facefab.pipelines.pools import StagePlan
    from facefab.training.config import TrainConfig

    cfg = build_config(TrainConfig, args, args.config)
    return [StagePlan(args.system, "train", cfg.cpus_per_worker or 0.0, cfg.gpus_per_worker, cfg.workers, cfg.workers)]


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from facefab.manifests.storage import storage_options_from_env
    from facefab.training.catalog import stages_of
    from facefab.training.config import TrainConfig, validate
    from facefab.training.runtime import run_training, summary_line

    base = build_config(TrainConfig, args, args.config)
    stages = stages_of(args.system)  # a pipeline (mytalk: motion, then render) or one system
    if len(stages) > 1 and (base.run_name or base.init_from):
        raise ValueError(f"{args.system} trains {len(stages)} systems; --run-name / --init-from name one "
                         f"run: train the stages ({', '.join(stages)}) one by one instead")
    per_stage = base.system_options if base.system_options and set(base.system_options) <= set(stages) else None
    configs = [dataclasses.replace(base, system=stage, **({"system_options": per_stage.get(stage)} if per_stage else {}))
               for stage in stages]
    for config in configs:
        validate(config)  # fail fast, before Ray starts
    opts = storage_options_from_env(args.storage_options)
    for config in configs:
        summary = run_training(config, args.data, args.out, opts, progress=args.progress)
        print(summary_line(summary))
    from facefab.operators.runtime import ray_logs_dir

    if ray_logs_dir():
        print(f"logs: {ray_logs_dir()}")  # the workers' own output (DeepSpeed, torch)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m facefab.jobs.commands.train ...` (the same as `facefab train ...`)."""
    import logging

    parser = argparse.ArgumentParser(prog="facefab")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"facefab train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

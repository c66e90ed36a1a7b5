"""`facefab models`: the generators facefab knows, their inputs, weight-free default and checkpoint.

A checkpoint is configured with FACEFAB_CHECKPOINT_<NAME> (e.g. FACEFAB_CHECKPOINT_MYTALK) or a YAML
--config mapping model names to a URI or to {checkpoint: URI} (optionally under a `models:` key).
"""

from __future__ import annotations

import argparse
import json

HELP = "list the generators, their inputs and configured checkpoints"


def add_parser(sub) -> None:
    p = sub.add_parser("models", help=HELP,
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, metavar="FILE", help="YAML mapping model name -> checkpoint")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _load_config(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of model name -> checkpoint")
    return data


def rows(config: dict | None = None) -> list[dict]:
    from facefab.models.registry import GENERATORS, checkpoint_for, env_var

    out = []
    for spec in GENERATORS.values():
        row = spec.to_dict()
        row["checkpoint"] = checkpoint_for(spec.name, config)
        row["checkpoint_configured"] = row["checkpoint"] is not None
        row["checkpoint_env"] = env_var(spec.name)
        out.append(row)
    return out


def run(args: argparse.Namespace) -> int:
    table = rows(_load_config(args.config))
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    header = ("NAME", "TASK", "INPUTS", "STATUS", "WEIGHT-FREE DEFAULT", "CHECKPOINT")
    lines = [header] + [(r["name"], r["task"], ",".join(r["inputs"]), r["status"], r["weight_free_default"],
                         r["checkpoint"] or f"- (set {r['checkpoint_env']})") for r in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1])
    return 0

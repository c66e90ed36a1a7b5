"""`facefab convert SYSTEM SRC DST`: a released checkpoint of SYSTEM (its official file layout, e.g.
Hallo's pretrained_models/hallo/net.pth or V-Express' model_ckpts/v-express/*.bin) -> a facefab
pipeline folder DST (safetensors, model_index.json) that `facefab animate --model SYSTEM --checkpoint
DST` loads.

Official weights are PyTorch pickles: they are read with torch.load(weights_only=True), which loads
tensors only and runs no code from the file; DST never holds a pickle. The converter maps the
official parameter names onto facefab's modules; every official tensor it could not place is listed
(a part of the official model facefab builds differently), and the command says so instead of
pretending the conversion was complete.
"""

from __future__ import annotations

import argparse
import json

HELP = "convert a released checkpoint (official layout) into a facefab pipeline folder"


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("system", help="the generator (facefab models lists them), e.g. hallo, v-express")
    p.add_argument("src", help="the released checkpoint folder (or file), local")
    p.add_argument("dst", help="the facefab pipeline folder to write (local)")
    p.add_argument("--json", action="store_true", help="print the conversion report as JSON")
    p.set_defaults(func=run)


def converter_of(system: str):
    """The `convert(src, dst) -> report` function of a generator; ValueError when it has none."""
    import importlib

    from facefab.models.registry import GENERATORS, get

    try:
        spec = get(system)
    except KeyError:
        raise ValueError(f"unknown system {system!r}; choose from {GENERATORS.names()}") from None
    if not spec.converter:
        have = [s.name for s in GENERATORS.values() if s.converter]
        raise ValueError(f"{spec.title} has no converter (systems with one: {have})")
    module, name = spec.converter.split(":")
    return getattr(importlib.import_module(module), name)


def run(args: argparse.Namespace) -> int:
    import os

    convert = converter_of(args.system)
    if not os.path.exists(args.src):
        raise ValueError(f"{args.src} does not exist")
    report = convert(args.src, args.dst)
    unmapped = list(report.get("unmapped", []))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"{args.system}: {report.get('mapped', '?')} tensors written to {args.dst}")
        if unmapped:
            print(f"{len(unmapped)} official tensors were not placed (facefab builds these parts differently), "
                  f"e.g. {unmapped[:5]}")
    return 0

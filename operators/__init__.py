"""Operators: thin stages that adapt manifest rows to the layers below; one module per stage.

The contract's names are loaded on first use, so `facefab.operators.runtime` (Ray start-up,
signal handling) stays cheap to import for the CLI.
"""

from __future__ import annotations

import importlib

__all__ = ["Filtered", "Operator", "OperatorError", "Resources", "RunContext"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(".base", __name__), name)

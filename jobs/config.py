"""Config dataclasses <-> YAML files <-> command-line flags.

Every field of a job's config dataclass (nested dataclasses included) can be set three ways, in
increasing precedence: its default, the YAML file given with --config, and a flag. Flags are
generated from the fields: `crop_size` -> `--crop-size`, nested `faces.min_track_frames` ->
`--faces.min-track-frames`. Lists take comma-separated values, bools take true/false.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

_MISSING = object()


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def parse_value(text: str, tp: Any) -> Any:
    """Parse a flag's text into the field's type."""
    tp, optional = _unwrap_optional(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(tp)
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    if tp in (int, float, str):
        return tp(text)
    if origin in (list, tuple):
        (inner, *_rest) = typing.get_args(tp) or (str,)
        items = [parse_value(t.strip(), inner) for t in text.split(",") if t.strip()]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        import json

        return json.loads(text)
    return yaml.safe_load(text)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Values from YAML: nested dicts become dataclasses, lists stay lists, scalars are checked."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: null is not allowed")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    if typing.get_origin(tp) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    types_ = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def load_yaml(path: str | Path) -> dict[str, Any]:
    text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a YAML mapping")
    return data


def walk_fields(cls: type, prefix: str = ""):
    """(dotted name, type, default) for every leaf field, depth first."""
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(types_[f.name])
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from walk_fields(tp, name + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else _MISSING)
            yield name, types_[f.name], default, f.metadata.get("help", "")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset()) -> None:
    group = parser.add_argument_group("config fields (override --config)")
    for name, tp, default, help_text in walk_fields(cls):
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        shown = "" if default is _MISSING else f" (default: {default})"
        group.add_argument(flag, dest=f"cfg:{name}", default=_MISSING, metavar=_metavar(tp),
                           type=lambda text, tp=tp: parse_value(text, tp), help=f"{help_text}{shown}".strip())


def _metavar(tp: Any) -> str:
    tp, _ = _unwrap_optional(tp)
    return getattr(tp, "__name__", "VALUE").upper()


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        data = data.setdefault(p, {})
    data[parts[-1]] = value


def build_config(cls: type, args: argparse.Namespace, config_path: str | None = None) -> Any:
    """Defaults <- YAML file <- flags."""
    data: dict[str, Any] = load_yaml(config_path) if config_path else {}
    for key, value in vars(args).items():
        if key.startswith("cfg:") and value is not _MISSING:
            _set_dotted(data, key[4:], value)
    return from_dict(cls, data)

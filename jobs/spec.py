"""Declarative job specs: one YAML file describes one `facefab` job; `facefab run JOB.yaml` runs it.

    version: 1                       # required; the only version so far
    kind: preprocess                 # preprocess | dub | train
    name: catalog-2026-q3            # optional, informational (also `description`)
    inputs: [s3://${FACEFAB_BUCKET}/raw/catalog.parquet]     # preprocess: INPUT... (a list or one string)
    #   dub:   manifest: URI         or   video: URI + audio: URI
    #   train: system: facevid2vid   and  data: ROOT (a preprocess output root)
    out: s3://${FACEFAB_BUCKET}/datasets/catalog-2026-q3   # required
    storage_options: {...}           # optional: fsspec options (--storage-options); default: environment
    options:                         # optional run flags
      resume: true                   #   preprocess, dub: resume, max_attempts, limit, progress, gpus
      max_attempts: 3                #   train: workers, gpus_per_worker, max_steps, deepspeed, progress
      progress: false
    config:                          # optional: fields of the subcommand's config dataclass
      faces: {min_track_frames: 25}  #   (PreprocessConfig / the dub config / TrainConfig)

`spec_to_argv(spec)` is the exact `facefab` argv the spec stands for; `facefab run` executes it in
the same process (`facefab.jobs.cli.main(argv)`), so a spec behaves the same on a laptop and, with
RAY_ADDRESS set (as it is inside a Ray job), on a cluster. `facefab run JOB.yaml --dry-run` prints it.

Rules:

* Environment: `${VAR}` and `${VAR:-default}` in any string value (config included) are replaced
  from the environment when the spec is loaded, so buckets, endpoints and credentials come from the
  environment / Kubernetes secrets, never from the file. `${VAR}` with VAR unset or empty is an
  error; `$$` is a literal `$`. Bare `$VAR` is left alone.
* Relative paths: local paths in the path fields (inputs, manifest, video, audio, data, out and
  options.deepspeed) are resolved against the folder that holds the spec file, NOT the current
  directory, so `facefab run jobs/specs/local_preprocess.yaml` does the same from anywhere. URIs
  (`s3://...`, anything with `://`) are untouched; `~` is expanded. Values inside `config` are passed
  through as written (relative ones are then relative to the current directory).
* `config` is written to a temporary YAML file that is passed as `--config`; it is checked against
  the subcommand's config dataclass when the spec is loaded (unknown fields are an error).
* Unknown keys, a missing `out`, an unknown `kind`, inputs of another kind and options the kind does
  not take are errors (ValueError naming the file and the key).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facefab.manifests.registry import Registry

SPEC_VERSION = 1

# shown in place of the temporary --config file when no file is written (dry runs, tests)
CONFIG_PLACEHOLDER = "<config.yaml>"

_COMMON_KEYS = ("version", "kind", "name", "description", "out", "storage_options", "options", "config")

# option name -> (type, flag); bools become --flag / --no-flag, None values are left out
_RUN_OPTIONS: dict[str, tuple[type, str]] = {
    "resume": (bool, "--resume"),
    "max_attempts": (int, "--max-attempts"),
    "limit": (int, "--limit"),
    "progress": (bool, "--progress"),
    "max_failed_fraction": (float, "--max-failed-fraction"),
    "commit_seconds": (float, "--commit-seconds"),
    "gpus": (bool, "--gpus"),
}
_TRAIN_OPTIONS: dict[str, tuple[type, str]] = {
    "workers": (int, "--workers"),
    "gpus_per_worker": (float, "--gpus-per-worker"),
    "max_steps": (int, "--max-steps"),
    "deepspeed": (str, "--deepspeed"),
    "progress": (bool, "--progress"),
}


@dataclass(frozen=True)
class _Kind:
    command: str
    inputs: tuple[str, ...]            # the kind's own top-level keys
    options: dict[str, tuple[type, str]]
    config_class: tuple[str, str]       # (module, class) of the subcommand's config dataclass
    path_keys: tuple[str, ...]          # top-level keys holding local paths or URIs


KINDS: Registry[_Kind] = Registry("job kind")
KINDS.register("preprocess")(_Kind("preprocess", ("inputs",), _RUN_OPTIONS,
                                   ("facefab.pipelines.preprocess", "PreprocessConfig"), ("inputs", "out")))
KINDS.register("dub")(_Kind("dub", ("manifest", "video", "audio"), _RUN_OPTIONS,
                            ("facefab.operators.dub", "DubConfig"), ("manifest", "video", "audio", "out")))
KINDS.register("train")(_Kind("train", ("system", "data"), _TRAIN_OPTIONS,
                              ("facefab.training.runtime", "TrainConfig"), ("data", "out")))


@dataclass
class JobSpec:
    kind: str
    out: str
    version: int = SPEC_VERSION
    name: str | None = None
    description: str | None = None
    inputs: list[str] = field(default_factory=list)   # preprocess
    manifest: str | None = None                        # dub
    video: str | None = None                           # dub
    audio: str | None = None                           # dub
    system: str | None = None                          # train
    data: str | None = None                            # train
    storage_options: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    source: str | None = None                          # the file it was read from

    @property
    def command(self) -> str:
        return KINDS.get(self.kind).command


# ---------------------------------------------------------------------------------------------
# environment expansion

_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, env: Mapping[str, str] | None = None, where: str = "spec") -> Any:
    """Replace ${VAR} / ${VAR:-default} in every string of a nested value (keys are left alone)."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            got = env.get(name)
            if got:
                return got
            if default is not None:
                return default
            raise ValueError(f"{where}: environment variable {name} is not set (used as ${{{name}}}); "
                             f"set it or write ${{{name}:-default}}")
        return _ENV_RE.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: expand_env(v, env, f"{where}.{k}") for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# loading and validation

def _is_uri(text: str) -> bool:
    return "://" in text


def _resolve_path(text: str, base_dir: Path | None) -> str:
    if _is_uri(text):
        return text
    path = os.path.expanduser(text)
    if base_dir is not None and not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    return os.path.normpath(path) if base_dir is not None or os.path.isabs(path) else path


def _need_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _check_type(value: Any, tp: type, where: str) -> Any:
    ok = (isinstance(value, bool) if tp is bool
          else isinstance(value, int) and not isinstance(value, bool) if tp is int
          else isinstance(value, (int, float)) and not isinstance(value, bool) if tp is float
          else isinstance(value, tp))
    if not ok:
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def config_class(kind: str) -> type:
    """The subcommand's config dataclass."""
    module, name = KINDS.get(kind).config_class
    cls = getattr(importlib.import_module(module), name, None)
    if cls is None:
        raise ImportError(f"job kind {kind!r}: {module} has no {name}")
    return cls


def _check_config(kind: str, config: dict[str, Any], where: str) -> None:
    from .config import from_dict

    if kind == "train" and "system" in config:
        raise ValueError(f"{where}.system: set the system at the top level (`system:`), not in config")
    from_dict(config_class(kind), config, where)


def parse_spec(data: Any, *, base_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
               source: str | None = None, check_config: bool = True) -> JobSpec:
    """A JobSpec from a loaded YAML mapping; base_dir resolves relative paths (None: keep them)."""
    where = source or "job spec"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a job spec must be a YAML mapping, got {type(data).__name__}")
    if "version" not in data:
        raise ValueError(f"{where}: missing `version` (this facefab reads `version: {SPEC_VERSION}`)")
    if data["version"] != SPEC_VERSION:
        raise ValueError(f"{where}: version: unsupported spec version {data['version']!r}; "
                         f"this facefab reads version {SPEC_VERSION}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: kind: unknown job kind {kind!r}; choose from {sorted(KINDS)}")
    k = KINDS.get(kind)
    allowed = set(_COMMON_KEYS) | set(k.inputs)
    unknown = sorted(set(data) - allowed)
    if unknown:
        others = sorted({key for name, kk in KINDS.items() if name != kind for key in kk.inputs} & set(unknown))
        hint = f" ({', '.join(others)} belong(s) to another kind)" if others else ""
        raise ValueError(f"{where}: unknown key(s) {unknown} for kind {kind!r}{hint}; allowed: {sorted(allowed)}")
    if data.get("out") in (None, ""):
        raise ValueError(f"{where}: missing `out` (the output root: a local path or s3://bucket/prefix)")

    data = {key: expand_env(value, env, f"{where}: {key}") for key, value in data.items()}
    base = Path(base_dir).resolve() if base_dir is not None else None
    spec = JobSpec(kind=kind, out=_need_str(data["out"], f"{where}: out"), source=source,
                   name=data.get("name"), description=data.get("description"))

    if kind == "preprocess":
        inputs = data.get("inputs")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not inputs or not isinstance(inputs, list):
            raise ValueError(f"{where}: preprocess needs `inputs`: a list of folders, globs, videos or "
                             f"catalogs (Parquet/CSV with video_uri)")
        spec.inputs = [_need_str(v, f"{where}: inputs[{i}]") for i, v in enumerate(inputs)]
    elif kind == "dub":
        has_manifest = data.get("manifest") is not None
        has_pair = data.get("video") is not None or data.get("audio") is not None
        if has_manifest == has_pair:
            raise ValueError(f"{where}: dub needs either `manifest` (a Parquet/CSV of jobs) or `video` and "
                             f"`audio` (one job), not {'both' if has_manifest else 'neither'}")
        if has_manifest:
            spec.manifest = _need_str(data["manifest"], f"{where}: manifest")
        else:
            spec.video = _need_str(data.get("video"), f"{where}: video")
            spec.audio = _need_str(data.get("audio"), f"{where}: audio")
    else:  # train
        for key in ("system", "data"):
            if data.get(key) is None:
                raise ValueError(f"{where}: train needs `{key}`" + (
                    " (a training system, e.g. facevid2vid)" if key == "system" else " (a preprocess output root)"))
        spec.system = _need_str(data["system"], f"{where}: system")
        spec.data = _need_str(data["data"], f"{where}: data")

    for key in k.path_keys:
        value = getattr(spec, key)
        if isinstance(value, list):
            setattr(spec, key, [_resolve_path(v, base) for v in value])
        elif value is not None:
            setattr(spec, key, _resolve_path(value, base))

    so = data.get("storage_options")
    if isinstance(so, str):
        try:
            so = json.loads(so)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: storage_options: not valid JSON ({exc})") from None
    if so is not None and not isinstance(so, dict):
        raise ValueError(f"{where}: storage_options: expected a mapping, got {so!r}")
    spec.storage_options = so

    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"{where}: options: expected a mapping, got {options!r}")
    bad = sorted(set(options) - set(k.options))
    if bad:
        raise ValueError(f"{where}: options: unknown option(s) {bad} for kind {kind!r}; allowed: {sorted(k.options)}")
    for name, value in options.items():
        if value is not None:
            _check_type(value, k.options[name][0], f"{where}: options.{name}")
    if options.get("deepspeed"):
        options = {**options, "deepspeed": _resolve_path(options["deepspeed"], base)}
    spec.options = options

    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"{where}: config: expected a mapping of {'/'.join(k.config_class)} fields, got {config!r}")
    if check_config:
        _check_config(kind, config, f"{where}: config")
    spec.config = config
    return spec


def load_spec(path: str | os.PathLike, env: Mapping[str, str] | None = None, check_config: bool = True) -> JobSpec:
    """Read a spec file; relative paths in it are resolved against the file's folder."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"job spec not found: {path}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    return parse_spec(data, base_dir=p.resolve().parent, env=env, source=str(path), check_config=check_config)


# ---------------------------------------------------------------------------------------------
# argv

def spec_to_argv(spec: JobSpec, config_path: str | None = None) -> list[str]:
    """The `facefab` argv (without the program name) the spec stands for.

    With a `config`, `--config config_path` is included (CONFIG_PLACEHOLDER when config_path is None;
    `materialized_argv` writes the real file).
    """
    k = KINDS.get(spec.kind)
    argv: list[str] = [k.command]
    if spec.kind == "preprocess":
        argv += spec.inputs
    elif spec.kind == "dub":
        argv += [spec.manifest] if spec.manifest is not None else ["--video", spec.video, "--audio", spec.audio]
    else:
        argv += [spec.system, "--data", spec.data]
    argv += ["--out", spec.out]
    if spec.storage_options is not None:
        argv += ["--storage-options", json.dumps(spec.storage_options, sort_keys=True, separators=(",", ":"))]
    if spec.config:
        argv += ["--config", config_path or CONFIG_PLACEHOLDER]
    for name, (tp, flag) in k.options.items():
        value = spec.options.get(name)
        if value is None:
            continue
        if tp is bool:
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def config_yaml(spec: JobSpec, redacted: bool = False) -> str:
    config = redact_mapping(spec.config) if redacted else spec.config
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


@contextlib.contextmanager
def materialized_argv(spec: JobSpec) -> Iterator[list[str]]:
    """spec_to_argv with the spec's config written to a temporary --config file (removed on exit)."""
    if not spec.config:
        yield spec_to_argv(spec)
        return
    with tempfile.TemporaryDirectory(prefix="facefab-run-") as tmp:
        path = os.path.join(tmp, f"{spec.kind}-config.yaml")
        Path(path).write_text(config_yaml(spec))
        yield spec_to_argv(spec, config_path=path)


_URI_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)
_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|private|(^|_)key$", re.I)


def redact_argv(argv: list[str]) -> list[str]:
    """argv for logs and --dry-run: the --storage-options value (it may hold credentials) and the
    user:password part of any URI replaced."""
    out = [_URI_USERINFO.sub(r"\g<scheme><redacted>@", a) for a in argv]
    for i, a in enumerate(out[:-1]):
        if a == "--storage-options":
            out[i + 1] = "<redacted>"
    return out


def redact_mapping(value: Any) -> Any:
    """A config for display: values under secret-looking keys (secret, password, token, *_key) and
    URI credentials replaced, recursively."""
    if isinstance(value, dict):
        return {k: "<redacted>" if isinstance(k, str) and _SECRET_KEY.search(k) else redact_mapping(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact_mapping(v) for v in value]
    return _URI_USERINFO.sub(r"\g<scheme><redacted>@", value) if isinstance(value, str) else value

"""Object-storage helpers over fsspec: one way to open a filesystem, join URIs and commit atomically.

Atomic commit: local files are written to a dot-prefixed temp name in the destination folder and
moved into place with os.replace (atomic on POSIX). On object stores a single PUT is already
all-or-nothing, so the object is uploaded from a local temp file in one request.
Readers list only names without a leading '.' or '_', so in-flight temp files are never seen.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

ENV_STORAGE_OPTIONS = "FACEFAB_STORAGE_OPTIONS"


def storage_options_from_env(explicit: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """Storage options for S3-compatible stores.

    Precedence: explicit options (dict or JSON string) > $FACEFAB_STORAGE_OPTIONS (JSON) >
    the standard AWS variables (AWS_ENDPOINT_URL / FACEFAB_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY), which s3fs would also pick up except for the endpoint.
    """
    opts: dict[str, Any] = {}
    endpoint = os.environ.get("FACEFAB_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        opts["key"] = os.environ["AWS_ACCESS_KEY_ID"]
    if os.environ.get("AWS_SECRET_ACCESS_KEY"):
        opts["secret"] = os.environ["AWS_SECRET_ACCESS_KEY"]
    env_json = os.environ.get(ENV_STORAGE_OPTIONS)
    if env_json:
        opts.update(_parse_options(env_json, ENV_STORAGE_OPTIONS))
    if explicit:
        opts.update(_parse_options(explicit, "--storage-options") if isinstance(explicit, str) else explicit)
    return _normalise_s3_options(opts)


def _parse_options(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} must be a JSON object, got {text!r}: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _normalise_s3_options(opts: dict[str, Any]) -> dict[str, Any]:
    # s3fs takes the endpoint under client_kwargs; accept the flat spelling users type.
    opts = dict(opts)
    endpoint = opts.pop("endpoint_url", None)
    if endpoint:
        opts.setdefault("client_kwargs", {})
        opts["client_kwargs"] = {**opts["client_kwargs"], "endpoint_url": endpoint}
    return opts


# Bounded waits on S3 calls: a store that stops answering ends the call with an error (naming the
# endpoint) in about a minute instead of hanging; user options override each value.
S3_CLIENT_DEFAULTS = {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 2, "mode": "standard"}}
S3FS_RETRIES = 1  # s3fs's own retry loop (default 5) would multiply botocore's attempts above


def _with_s3_defaults(opts: dict[str, Any]) -> dict[str, Any]:
    return {**opts, "config_kwargs": {**S3_CLIENT_DEFAULTS, **(opts.get("config_kwargs") or {})}}


def open_fs(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for a local path, file:// or any fsspec URI (s3://, gs://, memory://)."""
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    opts = storage_options if protocol not in ("file", "local") else {}
    if protocol in ("s3", "s3a"):
        opts = _with_s3_defaults(opts or {})
    fs, path = fsspec.core.url_to_fs(uri, **(opts or {}))
    if protocol in ("s3", "s3a"):
        fs.retries = S3FS_RETRIES
    return fs, path


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path_of(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def absolute_uri(uri: str) -> str:
    """A local path made absolute, so manifests stay valid for Ray workers and later jobs that run in
    other directories; URIs with a scheme are returned unchanged."""
    if not isinstance(uri, str) or not uri or ("://" in uri and not uri.startswith("file://")):
        return uri
    return os.path.abspath(local_path_of(uri))


# Schemes that make this process fetch from arbitrary hosts; an input URI may use them only when an
# allowed root names them (`--allow-input-roots https://media.example.com/`).
_FETCH_SCHEMES = ("http://", "https://", "ftp://")


def check_input_uri(uri: str, allowed_roots: Sequence[str] | None = None) -> None:
    """Raise PermissionError unless `uri` may be read as an input: with `allowed_roots`, it must lie
    under one of them; without, anything but http(s)/ftp (server-side requests to any host)."""
    uri = absolute_uri(uri)
    if allowed_roots:
        roots = [absolute_uri(r).rstrip("/") + "/" for r in allowed_roots]
        if not any(uri.startswith(root) for root in roots):
            raise PermissionError(f"input '{uri}' is outside the allowed input roots {roots}")
    elif uri.lower().startswith(_FETCH_SCHEMES):
        raise PermissionError(f"input '{uri}': {uri.split('://')[0]} inputs are off; allow their host "
                              "with --allow-input-roots")


def join_uri(root: str, *parts: str) -> str:
    root = root.rstrip("/")
    if "://" in root:
        scheme, rest = root.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts)
    return os.path.join(root, *parts)


def exists(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = open_fs(uri, storage_options)
    return fs.exists(path)


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    fs, path = open_fs(uri, storage_options)
    with fs.open(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def atomic_output(uri: str, storage_options: dict[str, Any] | None = None) -> Iterator[str]:
    """Yield a local temp path to write; on success it becomes `uri`, on error it disappears.

    Local: the temp file sits in the destination folder (so os.replace is an atomic rename) under
    a dot-name without the real suffix, so listings and globs skip it. Remote: a local temp file
    is uploaded with one put_file once complete.
    """
    fs, path = open_fs(uri, storage_options)
    tag = uuid.uuid4().hex[:8]
    local = isinstance(fs, LocalFileSystem)
    if local:
        folder, name = os.path.split(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.{tag}.tmp")
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".facefab-{tag}-", suffix=".tmp")
        os.close(fd)
    try:
        yield tmp
        if local:
            os.replace(tmp, path)
        else:
            fs.put_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write `data` to `uri` so that readers see either nothing or the whole object."""
    with atomic_output(uri, storage_options) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_put_file(local_file: str, uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Copy/upload a finished local file to `uri` in one atomic step (the local file is kept)."""
    with atomic_output(uri, storage_options) as tmp:
        shutil.copyfile(local_file, tmp)


def list_visible(uri: str, suffix: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Committed files under a folder: names ending in `suffix`, skipping '.'/'_' temp names."""
    fs, path = open_fs(uri, storage_options)
    if not fs.exists(path):
        return []
    fs.invalidate_cache(path)
    names = []
    for entry in fs.ls(path, detail=False):
        base = posixpath.basename(entry.rstrip("/"))
        if base.endswith(suffix) and not base.startswith((".", "_")):
            names.append(entry)
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if isinstance(fs, LocalFileSystem):
        return sorted(names)
    return sorted(f"{protocol}://{n}" for n in names)


def remove(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = open_fs(uri, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def remove_stale_temps(root: str) -> int:
    """Delete the temp files `atomic_output` leaves behind when a process is killed mid-write
    (dot-names ending in .tmp) under a local ROOT; call it only while holding ROOT's lease. Object
    stores never see them (uploads are single PUTs). Returns how many were removed."""
    if not is_local(root) or not os.path.isdir(local_path_of(root)):
        return 0
    removed = 0
    for folder, _, files in os.walk(local_path_of(root)):
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed


class StoreUnreachable(OSError):
    """The object store behind a URI did not answer in time (or, as `StoreFull`, has no room):
    nothing more can be committed to it in this run."""


class StoreFull(StoreUnreachable):
    """The disk under a local ROOT is full (ENOSPC / EDQUOT)."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def endpoint_of(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """The store a remote URI talks to, for messages: the configured endpoint or the scheme."""
    return ((storage_options or {}).get("client_kwargs") or {}).get("endpoint_url") or uri.split("://")[0]


def check_reachable(uri: str, storage_options: dict[str, Any] | None = None, timeout: float = 60.0) -> None:
    """Fail fast, in one line naming the endpoint, when the store behind a remote `uri` does not
    answer a listing within `timeout` seconds (a store that accepts connections and then hangs would
    otherwise stall the run). Local paths pass at once."""
    if is_local(uri):
        return
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            fs, path = open_fs(uri, storage_options)
            fs.ls(path.split("/", 1)[0], detail=False, refresh=True)  # not s3fs's listing cache
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome.append(exc)

    worker = threading.Thread(target=probe, name="facefab-store-check", daemon=True)
    worker.start()
    worker.join(timeout)
    endpoint = endpoint_of(uri, storage_options)
    if not outcome:
        raise StoreUnreachable(f"object store {endpoint} did not answer within {timeout:.0f} s ({uri})")
    if outcome[0] is not None and not isinstance(outcome[0], FileNotFoundError):
        raise StoreUnreachable(f"object store {endpoint}: {type(outcome[0]).__name__}: {outcome[0]}") from outcome[0]

"""One run per ROOT: a lease file under ROOT, refreshed by a heartbeat while the run lasts.

A second run on the same ROOT finds a fresh lease and stops with a clear message (or waits for it
with `wait_seconds`); a lease whose heartbeat is older than `ttl_seconds` belongs to a run that
died and is taken over. Works on local disks and object stores alike (a small JSON object,
written whole); on stores without conditional writes two runs starting within the same second
could both write it, so the lease is read back after writing and the later writer stops.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

from .storage import StoreUnreachable, atomic_write_bytes, exists, join_uri, read_bytes, remove

LEASE_FILE = "_lease.json"


class RootBusy(ValueError):
    """Another live run holds this ROOT."""


class RootLease:
    def __init__(self, root: str, run_id: str, storage_options: dict[str, Any] | None = None, *,
                 ttl_seconds: float = 120.0, wait_seconds: float = 0.0, what: str = "run"):
        self.uri = join_uri(root, LEASE_FILE)
        self.root, self.run_id, self.storage_options = root, run_id, storage_options or {}
        self.ttl, self.wait, self.what = ttl_seconds, wait_seconds, what
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(read_bytes(self.uri, self.storage_options)) if exists(self.uri, self.storage_options) else None
        except (OSError, ValueError):
            return None  # half-visible or unreadable: treat as absent, the heartbeat rewrites ours

    def _write(self) -> None:
        body = {"run_id": self.run_id, "what": self.what, "host": socket.gethostname(), "pid": os.getpid(),
                "heartbeat": time.time()}
        atomic_write_bytes(self.uri, json.dumps(body).encode(), self.storage_options)

    def _holder(self) -> dict[str, Any] | None:
        """The live lease of another run, or None."""
        lease = self._read()
        if not lease or lease.get("run_id") == self.run_id:
            return None
        if lease.get("host") == socket.gethostname() and not _alive(lease.get("pid")):
            return None  # its process on this machine is gone (crashed, killed, lost its store)
        return lease if time.time() - float(lease.get("heartbeat", 0)) < self.ttl else None

    def acquire(self) -> RootLease:
        deadline = time.monotonic() + self.wait
        while (holder := self._holder()) is not None:
            if time.monotonic() >= deadline:
                age = time.time() - float(holder["heartbeat"])
                raise RootBusy(f"{self.root} is in use by {holder.get('what', 'run')} {holder['run_id']} "
                               f"(host {holder.get('host')}, pid {holder.get('pid')}, heartbeat {age:.0f} s ago); "
                               f"wait for it to finish or stop it — a lease without a heartbeat for "
                               f"{self.ttl:.0f} s is taken over")
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        self._write()
        time.sleep(0.05)
        lease = self._read()
        if lease and lease.get("run_id") != self.run_id:
            raise RootBusy(f"{self.root}: run {lease['run_id']} took the lease at the same moment; rerun later")
        self._thread = threading.Thread(target=self._heartbeat, name="facefab-lease", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a store hiccup (or the interpreter exiting under it):
                continue  # the next beat retries; the lease only lapses after the ttl

    def release(self, store_lost: bool = False) -> None:
        """Remove the lease; with `store_lost` only stop the heartbeat (the store does not answer,
        and the lease lapses by itself: its pid is gone, or its heartbeat is older than the ttl)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=0 if store_lost else 10)
        if store_lost:
            return
        lease = self._read()
        if lease and lease.get("run_id") == self.run_id:
            remove(self.uri, self.storage_options)

    def __enter__(self) -> RootLease:
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(store_lost=bool(exc_type and issubclass(exc_type, StoreUnreachable)))


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError):
        return True  # no pid recorded: only the heartbeat's age can tell
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True

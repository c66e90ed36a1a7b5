"""Ends a run on a remote ROOT promptly when its object store stops answering.

Workers and the manifest writer each wait out their own timeouts and retries on a dead store, and
the driver waits on the workers: a store that accepts connections and never answers would stall
the run for as long as there are rows left. `StoreWatch` probes the store from the driver every
`interval` seconds (`manifests.storage.check_reachable`, bounded by `timeout`); when a probe fails
it keeps the error and interrupts the main thread, and `run_pipeline` raises that error in place
of the interrupt. Rows committed before the outage stay; the rows in flight are redone by a rerun.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from facefab.manifests.storage import StoreUnreachable, check_reachable, is_local


class StoreWatch:
    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None, *, interval: float = 10.0,
                 timeout: float = 20.0):
        self.uri, self.storage_options = uri, storage_options
        self.interval, self.timeout = interval, timeout
        self.error: StoreUnreachable | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StoreWatch:
        if not is_local(self.uri):
            self._thread = threading.Thread(target=self._watch, name="facefab-store-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                check_reachable(self.uri, self.storage_options, timeout=self.timeout)
            except StoreUnreachable as exc:
                if self._stop.is_set():
                    return
                self.error = exc
                # a real signal, not _thread.interrupt_main(): it also wakes a main thread that is
                # blocked waiting for the workers
                os.kill(os.getpid(), signal.SIGINT)
                return

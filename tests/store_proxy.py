"""A TCP proxy on loopback in front of the test S3 server, for store-outage fault injection.

`pause()` stops forwarding while keeping every connection open (a store that accepts and then
never answers); `cut()` refuses new connections and resets the open ones (a store that is down);
`restore()` forwards again on the same port. The S3 server behind it keeps its objects throughout,
so a rerun after an outage sees exactly what the interrupted run committed.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

POLL = 0.1


class StoreProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.paused = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self._start_accepting()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pause(self) -> None:
        self.paused.set()

    def cut(self) -> None:
        self._stop.set()
        self._accepter.join()
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                    conn.close()
                except OSError:  # closed already by its pump
                    pass
            self._conns.clear()

    def restore(self) -> None:
        self.paused.clear()
        if self._stop.is_set():
            self._stop.clear()
            self._listener = self._listen(self.port)
            self._start_accepting()

    def close(self) -> None:
        self.paused.clear()
        if not self._stop.is_set():
            self.cut()

    # -- internals -----------------------------------------------------------------------------
    @staticmethod
    def _listen(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        sock.settimeout(POLL)
        return sock

    def _start_accepting(self) -> None:
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(POLL)
        try:
            while True:
                if self.paused.is_set():
                    time.sleep(POLL)
                    continue
                try:
                    data = src.recv(1 << 16)
                except TimeoutError:
                    continue
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

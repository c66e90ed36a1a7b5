"""One run per ROOT: the lease on local disk and on the loopback S3 server."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from facefab.manifests.lease import LEASE_FILE, RootBusy, RootLease
from facefab.manifests.storage import atomic_write_bytes, exists, join_uri, remove_stale_temps


def _roots(tmp_path, request):
    if request.param == "local":
        return str(tmp_path / "root"), {}
    return request.getfixturevalue("s3_root")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def root(tmp_path, request):
    return _roots(tmp_path, request)


def test_a_second_run_on_a_live_root_stops_with_the_holder_named(root):
    uri, opts = root
    with RootLease(uri, "run-a", opts, what="preprocess"):
        assert exists(join_uri(uri, LEASE_FILE), opts)
        with pytest.raises(RootBusy, match="in use by preprocess run-a"):
            RootLease(uri, "run-b", opts).acquire()
    assert not exists(join_uri(uri, LEASE_FILE), opts)  # released
    with RootLease(uri, "run-b", opts):
        pass


def test_a_dead_runs_lease_is_taken_over_and_a_waiting_run_gets_a_released_one(root):
    uri, opts = root
    stale = {"run_id": "dead", "host": "h", "pid": 1, "heartbeat": time.time() - 1000}
    atomic_write_bytes(join_uri(uri, LEASE_FILE), json.dumps(stale).encode(), opts)
    with RootLease(uri, "run-c", opts, ttl_seconds=120):
        pass
    holder = RootLease(uri, "run-d", opts, ttl_seconds=4).acquire()
    threading.Timer(2.0, holder.release).start()  # heartbeats keep d alive until it is released
    start = time.monotonic()
    with RootLease(uri, "run-e", opts, ttl_seconds=4, wait_seconds=30):
        assert 1.5 < time.monotonic() - start < 30


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess
    import sys

    uri = str(tmp_path / "root")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease = {"run_id": "killed", "host": socket.gethostname(), "pid": int(gone.stdout), "heartbeat": time.time()}
    atomic_write_bytes(join_uri(uri, LEASE_FILE), json.dumps(lease).encode(), {})
    with RootLease(uri, "rerun", {}):  # fresh heartbeat, but its process is gone: no wait
        pass
    lease["pid"] = os.getpid()  # alive: the holder is named
    atomic_write_bytes(join_uri(uri, LEASE_FILE), json.dumps(lease).encode(), {})
    with pytest.raises(RootBusy, match="in use by run killed"):
        RootLease(uri, "rerun", {}).acquire()


def test_temp_files_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / "artifacts" / "crops").mkdir(parents=True)
    (tmp_path / "artifacts" / "crops" / ".x.mp4.1a2b3c4d.tmp").write_bytes(b"half")
    (tmp_path / "artifacts" / "crops" / "x.mp4").write_bytes(b"whole")
    assert remove_stale_temps(str(tmp_path)) == 1
    assert sorted(p.name for p in (tmp_path / "artifacts" / "crops").iterdir()) == ["x.mp4"]

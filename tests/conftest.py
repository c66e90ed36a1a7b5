"""Shared fixtures: the shared media folder and a real S3 server on loopback (moto_server).

The S3 server is a separate process speaking the S3 HTTP protocol, like s3fs's own test suite
uses; our code talks to it through s3fs/botocore exactly as it would to AWS or MinIO.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_shared() -> Path:
    candidates = [Path(os.environ["FACEFAB_SHARED_DATA"])] if os.environ.get("FACEFAB_SHARED_DATA") else []
    candidates += [REPO.parent / "shared" / "data", REPO / "shared" / "data"]
    for c in candidates:
        if (c / "videos").is_dir():
            return c
    raise RuntimeError(f"shared test media not found; looked in {[str(c) for c in candidates]} "
                       "(set FACEFAB_SHARED_DATA)")


SHARED = _find_shared()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Start moto_server on 127.0.0.1 for the session; yields its endpoint URL."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto_server exited during start-up")
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start within 30 s")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_root(s3_server, monkeypatch):
    """A fresh bucket on the loopback S3 server; returns (root URI, storage options).

    The AWS variables are set too, so code paths that only read the environment (Ray workers,
    the CLI) reach the same server.
    """
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("FACEFAB_S3_ENDPOINT", s3_server)
    bucket = f"facefab-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_server}}
    return f"s3://{bucket}/run", opts


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session, sized for a 2-core machine."""
    import ray

    from facefab.pipelines.engine import init_ray

    init_ray(progress=False)
    yield ray
    ray.shutdown()

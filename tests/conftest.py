"""Shared fixtures: the test media folder and a real S3 server on loopback (moto_server).

Media. Every test that reads real media takes it from `SHARED` (also the `shared_data` fixture):
`tests/data/`, small trimmed copies of the shared example media bundled with the repository
(videos/, audio/, portraits/; sources, MIT licence and every cut in tests/data/README.md,
re-created by `python tests/data/make_test_media.py PATH/TO/shared/data`). So `make test` runs on
what is in the repository, with nothing beside the clone.

`FACEFAB_SHARED_DATA=/path/to/shared/data` runs the media tests on another folder of the same
layout instead, e.g. the full originals. The bundled copies are cut from 0 s, so every test window
reads the same moments there; the few expectations on whole files (durations and frame counts in
tests/media/test_media_io.py, the clip counts of tests/pipelines/test_engine.py) describe the
bundled copies and differ on the full originals. Unset or empty, the bundled media are used.

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
BUNDLED = REPO / "tests" / "data"  # the media bundled with the repository


def _find_shared() -> Path:
    """tests/data, or the folder $FACEFAB_SHARED_DATA names (it must hold videos/)."""
    override = os.environ.get("FACEFAB_SHARED_DATA")
    folder = Path(override).expanduser() if override else BUNDLED
    if not (folder / "videos").is_dir():
        where = f"FACEFAB_SHARED_DATA={override!r}" if override else "the bundled tests/data"
        raise RuntimeError(f"test media not found: {where} has no videos/ folder "
                           f"(re-create tests/data with tests/data/make_test_media.py)")
    return folder


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


@pytest.fixture(scope="session")
def talking_root(tmp_path_factory, ray_local) -> str:
    """`facefab preprocess` over 3 s cuts (with their audio) of two talking heads of the bundled
    media: a manifest root with two ok face tracks (aligned crops, landmarks, pose, parsing masks,
    audio features). Built once per session for the audio-driven systems (Hallo, V-Express, GAIA)."""
    from facefab.jobs.cli import main
    from facefab.manifests import read_manifest
    from facefab.media import probe, read_audio, read_frames, write_video

    clips = tmp_path_factory.mktemp("talking_clips")
    for name in ("drive_d6", "drive_d10"):
        src = str(SHARED / "videos" / f"{name}.mp4")
        write_video(str(clips / f"{name}.mp4"), read_frames(src, start=0.0, end=3.0), probe(src).fps,
                    audio=read_audio(src, start=0.0, end=3.0), audio_rate=16000)
    root = str(tmp_path_factory.mktemp("talking_data") / "root")
    assert main(["preprocess", str(clips), "--out", root, "--no-progress"]) == 0
    rows = read_manifest(root).to_pylist()
    assert sorted(r["status"] for r in rows) == ["ok", "ok"], [r.get("error") for r in rows]
    return root


@pytest.fixture(scope="session")
def talking_clips(talking_root) -> dict:
    """talking_root's rows by clip name ("drive_d6", "drive_d10"). Tests pick their row by name: row
    ids come from the session's temporary paths, so the manifest's order changes from run to run."""
    from facefab.manifests import read_manifest

    return {Path(r["video_uri"]).stem: r for r in read_manifest(talking_root).to_pylist()}


@pytest.fixture
def animate_driving(shared_data, tmp_path):
    """A callable: `facefab animate --driving drive_d6 --checkpoint CHECKPOINT` on the hallo_3 portrait for
    `seconds` at 128 px, 2 steps, on the CPU; checks what every driven system's run must give (ok, tagged with
    `model`, one 128 px frame per driving frame, the driving video's frame rate) and returns the row."""
    from facefab.jobs.cli import main
    from facefab.manifests import read_manifest
    from facefab.media import probe, read_metadata
    from facefab.media.provenance import read_tag

    def run(checkpoint: str, model: str, seconds: float) -> dict:
        driving = str(shared_data / "videos" / "drive_d6.mp4")
        out = str(tmp_path / f"animate-{model}")
        assert main(["animate", "--reference", str(shared_data / "portraits" / "hallo_3.jpg"), "--driving", driving,
                     "--checkpoint", checkpoint, "--out", out, "--max-duration", str(seconds), "--size", "128",
                     "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
        (row,) = read_manifest(out).to_pylist()
        assert row["status"] == "ok" and row["model"] == model, row["error"]
        info, source = probe(row["out_uri"]), probe(driving)
        assert abs(row["frames"] - round(min(seconds, source.duration) * source.fps)) <= 1
        assert (info.width, info.height) == (128, 128) and abs(info.duration - row["frames"] / source.fps) <= 0.1
        assert read_tag(read_metadata(row["out_uri"]))["facefab:model"] == model
        return row

    return run

"""How a job command reports what ended it: one line, the right exit code."""
from __future__ import annotations

import argparse
import errno
import os

from facefab.jobs.cli import _run_command


def _args(func, tmp_path) -> argparse.Namespace:
    return argparse.Namespace(command="preprocess", out=str(tmp_path), func=func)


def test_a_full_disk_met_anywhere_in_the_run_is_one_line_saying_so(tmp_path, capsys):
    def run(_):
        try:  # as a media write deep in a stage would fail, re-raised wrapped by a caller
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "clip.mp4"))
        except OSError as exc:
            raise RuntimeError("stage failed") from exc

    assert _run_command(_args(run, tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is full" in err[0] and "No space left on device" in err[0]
    assert "free some space" in err[0] and "clip.mp4" in err[0]


def test_other_os_errors_are_still_crashes(tmp_path, capsys):
    def run(_):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    assert _run_command(_args(run, tmp_path)) == 1
    err = capsys.readouterr().err
    assert "crashed: OSError" in err and "is full" not in err


def test_convert_and_animate_usage_errors_exit_2_before_any_work(tmp_path, capsys, monkeypatch):
    from facefab.jobs.cli import main

    monkeypatch.delenv("FACEFAB_CHECKPOINT_V_EXPRESS", raising=False)
    assert main(["convert", "face-adapter", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "has no converter" in capsys.readouterr().err
    assert main(["convert", "beautyrec", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no BeautyREC.pt under" in capsys.readouterr().err
    assert main(["convert", "v-express", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    portrait = str(tmp_path / "p.jpg")
    assert main(["animate", "--reference", portrait, "--audio", portrait, "--model", "v-express",
                 "--out", str(tmp_path / "run")]) == 2
    assert "needs weights" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_animate_from_a_driving_video_usage_errors_exit_2(tmp_path, capsys, monkeypatch):
    """Speech and a driving video at once, a pose with a driving video, speech-only settings on a
    driving job, and face-vid2vid without weights are usage errors, before anything runs."""
    from facefab.jobs.cli import main

    monkeypatch.delenv("FACEFAB_CHECKPOINT_FACE_VID2VID", raising=False)
    portrait, video, out = str(tmp_path / "p.jpg"), str(tmp_path / "d.mp4"), str(tmp_path / "run")
    cases = [
        (["--audio", video, "--driving", video], "not several"),
        (["--driving", video, "--pose", video], "--pose goes with --audio"),
        (["--driving", video, "--fps", "30"], "fps"),
        (["--driving", video, "--model", "face-vid2vid"], "needs weights"),
        (["--audio", video, "--model", "face-vid2vid"], "model must be one of"),
        (["--audio", video, "--absolute"], "--absolute goes with a driving video"),
    ]
    for flags, message in cases:
        assert main(["animate", "--reference", portrait, *flags, "--out", out]) == 2, flags
        assert message in capsys.readouterr().err, flags
    assert not (tmp_path / "run").exists()

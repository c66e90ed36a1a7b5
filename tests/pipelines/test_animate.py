"""`facefab animate` from speech with the weight-free talking photo: real portraits, real speech."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from facefab.face.mesh import largest_face_landmarks
from facefab.face.parsing import mouth_open_ratio
from facefab.face.scores import av_sync_score
from facefab.jobs.cli import main
from facefab.manifests.io import read_manifest
from facefab.media import probe, read_audio, read_frames, write_audio
from facefab.media.provenance import verify_file


def test_animate_writes_a_talking_head_for_the_audio_and_fails_only_bad_rows(shared_data, tmp_path, ray_local):
    portraits, audio = shared_data / "portraits", shared_data / "audio"
    speech = str(tmp_path / "speech.wav")
    write_audio(speech, read_audio(str(audio / "speech_hallo1.wav"), sample_rate=16000, end=3.0), 16000)
    silence = str(tmp_path / "silence.wav")
    write_audio(silence, np.zeros(16000, np.float32), 16000)
    not_an_image = tmp_path / "portrait.jpg"
    not_an_image.write_text("not a picture")
    rows = [
        {"reference_uri": str(portraits / "lp_s9.jpg"), "audio_uri": speech, "out_name": "mona"},
        {"reference_uri": str(not_an_image), "audio_uri": speech, "out_name": "broken"},
        {"reference_uri": str(portraits / "hallo_3.jpg"), "audio_uri": silence, "out_name": "silent"},
        {"reference_uri": str(portraits / "hallo_3.jpg"), "audio_uri": str(tmp_path / "missing.wav"),
         "out_name": "no_audio"},
    ]
    manifest = tmp_path / "jobs.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = str(tmp_path / "out")
    args = ["animate", str(manifest), "--out", out, "--size", "256", "--no-progress", "--max-failed-fraction", "1"]
    assert main(args) == 0
    got = {r["out_name"]: r for r in read_manifest(out).to_pylist()}
    assert {n: r["status"] for n, r in got.items()} == {"mona": "ok", "broken": "failed", "silent": "failed",
                                                         "no_audio": "failed"}
    assert "not a readable image" in got["broken"]["error"]["message"]
    assert "nothing to animate" in got["silent"]["error"]["message"]
    assert "not found" in got["no_audio"]["error"]["message"]

    mona = got["mona"]
    info = probe(mona["out_uri"])
    assert (info.width, info.height, info.fps) == (256, 256, 25.0) and info.has_audio
    assert abs(info.duration - 3.0) <= 1 / 25 + 1e-6
    assert verify_file(mona["out_uri"]).watermark.found
    frames = read_frames(mona["out_uri"])
    sync, _ = av_sync_score(mouth_open_ratio(largest_face_landmarks(frames)),
                            _envelope(read_audio(speech, sample_rate=16000), len(frames)))
    assert sync >= 0.3, sync

    stamp = os.stat(mona["out_uri"]).st_mtime_ns
    assert main(args) == 0  # resumes: the done row is not redone
    assert os.stat(mona["out_uri"]).st_mtime_ns == stamp


def _envelope(audio: np.ndarray, n: int) -> np.ndarray:
    from facefab.audio.features import frame_rms

    return frame_rms(audio, 25.0, n)


def _rolls(frames: np.ndarray) -> np.ndarray:
    """Head roll per frame, the face meshed in the box found on the first frame (the detector misses
    a painted face at some tilts; the mesh itself does not)."""
    from facefab.face.detection import detect_faces
    from facefab.face.mesh import FaceMesher
    from facefab.face.pose import head_pose

    (face, *_), mesher = detect_faces(frames[:1])[0], FaceMesher()
    rolls = []
    for frame in frames:
        points = mesher(frame, face.bbox)
        rolls.append(np.nan if points is None else head_pose(points, frame.shape[1], frame.shape[0])[2])
    return np.array(rolls)


def test_weightfree_follows_the_roll_of_a_pose_table_and_of_a_driving_video(shared_data, tmp_path):
    """pose_uri: a yaw/pitch/roll CSV, and a real talking video turned by a known roll: the animated
    portrait's measured roll follows each (the driver's own is recovered from the video's face mesh)."""
    import cv2

    from facefab.operators.animate import AnimateConfig
    from facefab.operators.base import RunContext
    from facefab.pipelines.animate import animate_inputs, build_operators
    from facefab.pipelines.engine import run_local

    n, fps = 50, 25.0
    roll = 8.0 * np.sin(2 * np.pi * np.arange(n) / fps / 1.6)
    table = str(tmp_path / "pose.csv")
    pd.DataFrame({"yaw": np.zeros(n), "pitch": np.zeros(n), "roll": roll}).to_csv(table, index=False)
    source = read_frames(str(shared_data / "videos" / "drive_d6.mp4"), end=n / fps, fps=fps)[:n]
    turned = np.stack([cv2.warpAffine(f, cv2.getRotationMatrix2D((f.shape[1] / 2, f.shape[0] / 2), -r, 1.0),
                                      (f.shape[1], f.shape[0]), borderMode=cv2.BORDER_REFLECT_101)
                       for f, r in zip(source, roll)])
    from facefab.media import write_video

    driver = str(tmp_path / "driver.mp4")
    write_video(driver, turned, fps)
    speech = str(tmp_path / "speech.wav")
    write_audio(speech, read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), sample_rate=16000, end=2.0),
                16000)
    config = AnimateConfig(size=256, watermark=False)
    for pose in (table, driver):
        inputs = animate_inputs(reference=str(shared_data / "portraits" / "lp_s9.jpg"), audio=speech, pose=pose)
        (row,) = run_local(build_operators(config), inputs, RunContext(str(tmp_path / "out" / pose[-3:])))
        assert row["status"] == "ok", row["error"]
        measured = _rolls(read_frames(row["out_uri"]))[:n]
        seen = np.isfinite(measured)
        assert seen.mean() > 0.9 and seen[0]
        measured, expected = measured[seen] - measured[0], roll[seen]
        assert np.corrcoef(measured, expected)[0, 1] > 0.9, pose
        assert 0.6 < np.ptp(measured) / np.ptp(expected) < 1.4, (pose, np.ptp(measured))

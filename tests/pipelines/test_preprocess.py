"""`facefab preprocess` end to end on the shared videos plus generated bad inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from facefab.face.flow import load_flow
from facefab.jobs.cli import main
from facefab.manifests import read_manifest
from facefab.manifests.storage import open_fs, read_bytes
from facefab.media import probe, write_video
from facefab.media.arrays import load_npz
from facefab.pipelines.report import build_report

REPO_SAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "samples"


def _no_face_video(path):
    """2 s of smooth moving colour fields: decodable, with audio-free frames and no face."""
    rng = np.random.default_rng(0)
    base = (rng.random((9, 16, 3)) * 255).astype(np.uint8)
    import cv2

    frames = [np.roll(cv2.resize(base, (256, 192), interpolation=cv2.INTER_CUBIC), 4 * t, axis=1) for t in range(50)]
    write_video(str(path), np.stack(frames), 25)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("catalog")
    for video in sorted((shared_data / "videos").glob("*.mp4")):
        shutil.copy(video, folder / video.name)
    _no_face_video(folder / "no_face.mp4")
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(5000))
    return folder


@pytest.fixture(scope="module")
def preprocessed(catalog, tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("pre") / "root"
    code = main(["preprocess", str(catalog), "--out", str(root), "--no-progress"])
    assert code == 3  # completed, but 1 of 9 inputs (the corrupt one) failed: above the default 0.1
    return root


def _rows_by_video(root, opts=None):
    out: dict[str, list[dict]] = {}
    for row in read_manifest(str(root), opts).to_pylist():
        out.setdefault(row["video_uri"].rsplit("/", 1)[-1], []).append(row)
    return out


def test_every_real_video_yields_complete_face_tracks(preprocessed, shared_data):
    rows = _rows_by_video(preprocessed)
    for video in sorted((shared_data / "videos").glob("*.mp4")):
        ok = [r for r in rows[video.name] if r["status"] == "ok"]
        assert ok, f"{video.name}: no ok track; rows: {[(r['status'], r['error']) for r in rows[video.name]]}"
        for r in ok:
            frames = pq.read_table(r["frames_uri"]).to_pylist()
            assert len(frames) >= 0.9 * r["num_frames"] * (r["track_end"] - r["track_start"]) / (r["end"] - r["start"])
            with_lms = [f for f in frames if f["landmarks"] is not None]
            assert len(with_lms) >= 0.9 * len(frames) and len(with_lms[0]["landmarks"]) == 478 * 3
            assert all(f["pose"] is not None and len(f["pose"]) == 6 for f in with_lms)
            assert all(f["inverse_transform"] is not None for f in with_lms)
            masks = load_npz(r["masks_uri"])
            assert masks["labels"].shape[0] == len(frames) and masks["labels"].max() >= 9
            audio = load_npz(r["audio_features_uri"])
            assert len(audio["rms"]) == len(frames)
            flow = load_flow(r["flow_uri"])
            assert flow["flow"].shape[0] == len(frames) - 1
            crop = probe(r["crop_uri"])
            assert (crop.width, crop.height) == (512, 512) and crop.has_audio == r["has_audio"]
            for score in ("face_size", "blur", "pose_extremity", "landmark_jitter", "face_count", "speech_ratio"):
                assert r[score] is not None, score


def test_bad_inputs_get_the_right_status_and_message(preprocessed):
    rows = _rows_by_video(preprocessed)
    (corrupt,) = rows["corrupt.mp4"]
    assert corrupt["status"] == "failed" and corrupt["error"]["operator"] == "probe"
    assert "corrupt.mp4" in corrupt["error"]["message"]
    no_face = rows["no_face.mp4"]
    assert [r["status"] for r in no_face] == ["filtered"]
    assert "no face" in no_face[0]["error"]["message"]
    for silent in ("drive_d0.mp4", "talk_sun.mp4"):  # no audio stream: visual features, silent audio features
        for r in rows[silent]:
            assert r["status"] == "ok" and r["has_audio"] is False and r["has_speech"] is False
            assert r["av_sync"] is None
    in_sync = [r["av_sync"] for r in rows["drive_d6.mp4"] if r["status"] == "ok"]
    assert np.nanmean(in_sync) > 0.2  # d6's speech is in sync with its lips


def test_summary_and_rerun_resumes(preprocessed, catalog, capsys):
    summary = json.loads((preprocessed / "summary.json").read_text())
    assert summary["manifest_counts"]["failed"] == 1 and summary["manifest_counts"]["ok"] >= 7
    assert summary["outcome"] == "too_many_failed" and summary["exit_code"] == 3
    assert summary["failed_inputs"] == 1 and summary["failed_fraction"] == pytest.approx(1 / 9, abs=1e-4)
    assert summary["operators"]["faces"]["rows_per_s"] > 0
    before = read_manifest(str(preprocessed)).num_rows
    main(["preprocess", str(catalog), "--out", str(preprocessed), "--no-progress", "--max-attempts", "1"])
    rerun = json.loads((preprocessed / "summary.json").read_text())
    assert rerun["processed_inputs"] == 0 and rerun["skipped_done"] == 8 and rerun["skipped_exhausted"] == 1
    assert rerun["outcome"] == "completed" and rerun["exit_code"] == 0
    assert read_manifest(str(preprocessed)).num_rows == before


def test_report_shows_contact_sheets_histograms_and_errors(preprocessed):
    page = build_report(str(preprocessed), max_clips=3)
    assert page.count("data:image/jpeg;base64,") == 3
    assert page.count("data:image/png;base64,") >= 5  # score histograms
    assert "corrupt.mp4" in page and "no face" in page


def test_thresholds_from_flags_filter_with_reasons(tmp_path, ray_local):
    root = tmp_path / "strict"
    code = main(["preprocess", str(REPO_SAMPLES / "halfbody_sun_3s.mp4"), "--out", str(root), "--no-progress",
                 "--filter.min-face-size", "0.5"])
    assert code == 0
    (row,) = read_manifest(str(root)).to_pylist()
    assert row["status"] == "filtered" and "face_size" in row["error"]["message"] and "< min 0.5" in row["error"]["message"]
    assert row["face_size"] is not None and row["crop_uri"]  # scores and artifacts are kept


def test_operator_subset_and_bad_subset(tmp_path, ray_local, capsys):
    root = tmp_path / "subset"
    assert main(["preprocess", str(REPO_SAMPLES), "--out", str(root), "--no-progress",
                 "--operators", "probe,shots,faces,landmarks,align", "--limit", "1"]) == 0
    (row,) = read_manifest(str(root)).to_pylist()
    assert row["status"] == "ok" and row["crop_uri"] and row.get("masks_uri") is None
    assert main(["preprocess", str(REPO_SAMPLES), "--out", str(tmp_path / "bad"), "--operators", "landmarks"]) == 2
    assert "needs" in capsys.readouterr().err


def test_preprocess_to_s3_and_resume(s3_root, ray_local):
    root, opts = s3_root
    args = ["preprocess", str(REPO_SAMPLES / "talking_d6_4s.mp4"), "--out", root, "--no-progress",
            "--storage-options", json.dumps(opts)]
    assert main(args) == 0
    (row,) = read_manifest(root, opts).to_pylist()
    assert row["status"] == "ok" and row["crop_uri"].startswith("s3://")
    fs, path = open_fs(row["crop_uri"], opts)
    assert fs.size(path) > 10_000
    assert probe(row["crop_uri"], opts).has_audio
    assert main(args) == 0
    assert json.loads(read_bytes(root + "/summary.json", opts))["skipped_done"] == 1


def test_relative_root_stores_absolute_uris_and_an_image_is_named_as_such(tmp_path, monkeypatch, shared_data,
                                                                          ray_local):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(REPO_SAMPLES / "halfbody_sun_3s.mp4", inputs / "sun.mp4")
    shutil.copy(shared_data / "portraits" / "hallo_2.jpg", inputs / "photo.mp4")  # an image with a video name
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", "in", "--out", "data", "--no-progress", "--max-failed-fraction", "0.5"]) == 0
    rows = {Path(r["video_uri"]).name: r for r in read_manifest(str(tmp_path / "data")).to_pylist()}
    assert "single image, not a video" in rows["photo.mp4"]["error"]["message"]
    sun = rows["sun.mp4"]
    for column in ("video_uri", "crop_uri", "frames_uri", "masks_uri", "audio_features_uri", "flow_uri"):
        assert os.path.isabs(sun[column]) and os.path.exists(sun[column]), column

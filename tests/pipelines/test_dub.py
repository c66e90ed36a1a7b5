"""`facefab dub`: the must-hold checks on real media, plus the small pure functions.

Heavy fixtures run once per module: one real dub (drive_d3 + the first 4 s of speech_hallo1,
through the command line and Ray) and one 20-pair manifest of short cuts with two bad rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from facefab.audio.features import frame_rms, frame_voice_activity, load_vad
from facefab.face.detection import FaceDetector, Track, detect_faces, track_faces
from facefab.face.mesh import FaceMesher, mesh_track, to_68
from facefab.face.parsing import mouth_open_ratio
from facefab.face.scores import av_sync_score
from facefab.manifests.io import read_manifest
from facefab.media import probe, read_audio, read_frames, write_audio, write_video
from facefab.media.arrays import unpack_arrays
from facefab.media.provenance import verify_file
from facefab.models.lipsync.weightfree import (
    OPENING,
    MouthModel,
    Speech,
    WeightFreeConfig,
    cross_fades,
    dissolve,
    loudness_openness,
    select_frames,
    sounding,
)
from facefab.operators.base import RunContext
from facefab.operators.dub import DubConfig, retime_index, select_track
from facefab.pipelines.dub import build_operators, dub_inputs, run_dub
from facefab.pipelines.engine import run_local

SECONDS = 4.0  # of speech_hallo1 dubbed onto drive_d3 (max_duration)


# -- the real dub: drive_d3 + speech_hallo1 ----------------------------------------------------------

@pytest.fixture(scope="module")
def d3_dub(tmp_path_factory, shared_data, ray_local):
    from facefab.jobs.commands import dub as dub_command

    root = tmp_path_factory.mktemp("dub_d3")
    parser = argparse.ArgumentParser()
    dub_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["dub", "--video", str(shared_data / "videos" / "drive_d3.mp4"),
                              "--audio", str(shared_data / "audio" / "speech_hallo1.wav"),
                              "--out", str(root), "--max-duration", str(SECONDS), "--no-progress"])
    assert args.func(args) == 0
    rows = read_manifest(str(root)).to_pylist()
    assert len(rows) == 1
    return root, rows[0]


def _face_landmarks(frames: np.ndarray) -> np.ndarray:
    """(T, 478, 3) landmarks of the one face in `frames`, found independently of the pipeline."""
    detector, mesher = FaceDetector(), FaceMesher()
    try:
        (track,) = track_faces(detect_faces(frames, detector), min_track_frames=len(frames))
        landmarks, _ = mesh_track(frames, track.bbox, mesher)
    finally:
        detector.close()
        mesher.close()
    return landmarks


@pytest.fixture(scope="module")
def d3_frames(d3_dub, shared_data):
    """Decoded output, the source frames it was built on, and both frames' landmarks."""
    _, row = d3_dub
    out = read_frames(row["out_uri"])
    src = read_frames(str(shared_data / "videos" / "drive_d3.mp4"), end=len(out) / row["fps"])
    return out, src, _face_landmarks(src), _face_landmarks(out)


def test_dub_writes_the_new_audio_at_the_source_size_with_provenance(d3_dub, shared_data):
    root, row = d3_dub
    assert row["status"] == "ok", row["error"]
    assert row["model"] == "weightfree" and row["checkpoint"] is None
    assert row["out_uri"] == os.path.join(str(root), "outputs", f"{row['id']}.mp4")
    info, source = probe(row["out_uri"]), probe(str(shared_data / "videos" / "drive_d3.mp4"))
    assert (info.width, info.height, info.fps) == (source.width, source.height, source.fps)
    assert abs(info.duration - SECONDS) <= 1.0 / info.fps
    assert info.has_audio and info.audio_sample_rate == 44100  # the new audio's own rate, not 16 kHz
    muxed = read_audio(row["out_uri"])
    assert abs(len(muxed) / 16000 - SECONDS) < 0.05
    report = verify_file(row["out_uri"])
    assert report.watermark.found and report.tag["facefab:model"] == "weightfree"
    assert row["watermark_found"] and row["synthetic_tag"]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["pipeline"] == "dub" and summary["manifest_counts"]["ok"] == 1
    assert set(json.loads(row["stage_seconds"])) >= {"decode", "faces", "landmarks", "synthesis", "render", "encode"}


def _lower_face_masks(landmarks: np.ndarray, shape: tuple[int, int], grow: float = 1.3) -> np.ndarray:
    """(T, H, W) bool: the jaw-to-nose hull of each frame, grown about its centre."""
    masks = np.zeros((len(landmarks), *shape), np.uint8)
    for t, points in enumerate(to_68(landmarks[..., :2])):
        outline = points[np.r_[2:15, 31:36]]
        centre = outline.mean(axis=0)
        hull = cv2.convexHull(((outline - centre) * grow + centre).astype(np.float32))
        cv2.fillPoly(masks[t], [np.round(hull).astype(np.int32)], 1)
    return masks.astype(bool)


def test_dub_leaves_everything_outside_the_lower_face_as_it_was(d3_frames):
    out, src, src_marks, _ = d3_frames
    assert out.shape == src.shape
    outside = ~_lower_face_masks(src_marks, src.shape[1:3])
    diff = out.astype(np.float64) - src.astype(np.float64)
    mse = float((diff[outside] ** 2).mean())
    psnr = 10 * math.log10(255.0 ** 2 / mse)
    print(f"PSNR outside the lower face: {psnr:.1f} dB over {outside.mean():.0%} of the pixels")
    assert psnr >= 35.0
    inside = float((diff[~outside] ** 2).mean())
    assert inside > 4 * mse  # and the lower face did change


def test_dub_mouth_follows_the_new_audio_and_closes_in_silence(d3_dub, d3_frames, shared_data):
    _, row = d3_dub
    _, _, src_marks, out_marks = d3_frames
    audio = read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), end=SECONDS)
    envelope = frame_rms(audio, row["fps"], len(out_marks))
    opening = mouth_open_ratio(out_marks)
    dubbed, _ = av_sync_score(opening, envelope)
    undubbed, _ = av_sync_score(mouth_open_ratio(src_marks), envelope)
    print(f"weight-free sync score: output {dubbed:.2f}, undubbed source {undubbed:.2f} "
          f"(manifest: {row['sync_output']}, {row['sync_source']})")
    assert dubbed >= 0.5 and dubbed >= undubbed + 0.3
    assert abs(row["sync_output"] - dubbed) < 0.1 and abs(row["sync_source"] - undubbed) < 0.1

    speech = frame_voice_activity(audio, load_vad(), row["fps"], len(out_marks))
    silent = np.convolve(~speech, np.ones(5), "same") == 5  # 2 frames away from any speech
    assert silent.sum() >= 5
    assert np.nanmax(opening[silent]) < 0.05  # closed
    assert np.nanmedian(opening[envelope > np.percentile(envelope, 75)]) > 0.2  # open when loud


# -- a 20-pair manifest with two bad rows --------------------------------------------------------------

CUTS = [("drive_d3.mp4", 1.0), ("drive_d6.mp4", 2.0), ("drive_d10.mp4", 3.0), ("drive_d14.mp4", 1.0),
        ("drive_d0.mp4", 0.5), ("drive_d6.mp4", 9.0)]
AUDIO = [("speech_hallo1.wav", 1.0), ("speech_hallo2.wav", 2.0), ("speech_eng.wav", 10.0)]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, shared_data):
    """18 good pairs (1 s 256x256 cuts, 0.6-1.6 s of speech: shorter and longer than the video),
    one pair whose audio file is missing, one whose video has no face, and three whose new audio
    has no words: digital silence, noise, 0.2 s of speech."""
    folder = tmp_path_factory.mktemp("catalog")
    videos = []
    for i, (name, start) in enumerate(CUTS):
        uri = str(shared_data / "videos" / name)
        frames = read_frames(uri, start=start, end=start + 1.0, size=(256, 256))
        own = read_audio(uri, start=start, end=start + 1.0) if probe(uri).has_audio else None
        videos.append(str(folder / f"v{i}.mp4"))
        write_video(videos[-1], frames, probe(uri).fps, audio=own)
    audios = []
    for i in range(18):
        name, start = AUDIO[i % len(AUDIO)]
        audios.append((str(folder / f"a{i}.wav"), 0.6 + 0.06 * i))
        write_audio(audios[-1][0], read_audio(str(shared_data / "audio" / name), start=start,
                                              end=start + audios[-1][1]), 16000)
    noise = np.random.default_rng(0).integers(0, 255, (30, 256, 256, 3), dtype=np.uint8)
    faceless = str(folder / "faceless.mp4")
    write_video(faceless, np.stack([cv2.GaussianBlur(f, (0, 0), 8) for f in noise]), 30.0)
    rows = [{"video_uri": videos[i % len(videos)], "audio_uri": a, "out_name": f"pair{i:02d}", "seconds": s}
            for i, (a, s) in enumerate(audios)]
    rows.append({"video_uri": videos[0], "audio_uri": str(folder / "missing.wav"), "out_name": "missing_audio"})
    rows.append({"video_uri": faceless, "audio_uri": audios[0][0], "out_name": "no_face"})
    wordless = {"silent": np.zeros(16000, np.float32),
                "noise": (np.random.default_rng(1).standard_normal(32000) * 0.1).astype(np.float32),
                "blip": read_audio(str(shared_data / "audio" / "speech_eng.wav"), start=11.0, end=11.2)}
    for name, audio in wordless.items():
        write_audio(str(folder / f"{name}.wav"), audio, 16000)
        rows.append({"video_uri": videos[1], "audio_uri": str(folder / f"{name}.wav"), "out_name": name})
    manifest = folder / "pairs.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def test_manifest_with_bad_rows_fails_only_them_and_resumes(catalog, tmp_path, ray_local):
    root = str(tmp_path / "out")
    config = DubConfig(score=False)
    inputs = dub_inputs(str(catalog))
    first = run_dub(inputs, config, RunContext(root), progress=False)
    assert first.manifest_counts["ok"] == 18 and first.manifest_counts["failed"] == 5, first.errors
    rows = {r["out_name"]: r for r in read_manifest(root).to_pylist()}
    assert "not found" in rows["missing_audio"]["error"]["message"]
    assert "missing.wav" in rows["missing_audio"]["error"]["message"]
    assert "no face found" in rows["no_face"]["error"]["message"]
    assert "is silent: 0.00 s of speech in 1.00 s" in rows["silent"]["error"]["message"]
    for name in ("noise", "blip"):
        assert "has no speech the voice detector accepts" in rows[name]["error"]["message"], name
    assert {r["model"] for r in rows.values()} == {"weightfree"}
    for name, row in rows.items():
        if row["status"] != "ok":
            continue
        info = probe(row["out_uri"])
        assert abs(info.duration - row["seconds"]) <= 1.0 / info.fps + 1e-6, name  # extended or trimmed
        assert info.has_audio and (info.width, info.height) == (256, 256)
    stamps = {n: os.stat(r["out_uri"]).st_mtime_ns for n, r in rows.items() if r["status"] == "ok"}

    again = run_dub(inputs, config, RunContext(root), progress=False)
    assert again.skipped_done == 18 and again.processed_inputs == 5
    assert again.manifest_counts == {"ok": 18, "failed": 5, "filtered": 0}
    assert {n: os.stat(rows[n]["out_uri"]).st_mtime_ns for n in stamps} == stamps


def test_frames_without_a_face_pass_through(catalog, tmp_path):
    face = read_frames(str(catalog.parent / "v0.mp4"))[:20]
    flat = np.full_like(face, 90)
    video = str(tmp_path / "half.mp4")
    write_video(video, np.concatenate([face, flat]), 30.0)
    audio = str(tmp_path / "speech.wav")
    write_audio(audio, read_audio(str(catalog.parent / "a17.wav")), 16000)  # 1.62 s: ping-pong
    config = DubConfig(score=False, watermark=False)
    (row,) = run_local(build_operators(config), dub_inputs(video=video, audio=audio), RunContext(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    index = retime_index(40, row["num_frames"], "pingpong")
    out, src = read_frames(row["out_uri"]), np.concatenate([face, flat])[index]
    faceless = index >= 20
    assert row["face_fraction"] == pytest.approx(1 - faceless.mean(), abs=0.05)
    assert np.abs(out[faceless].astype(int) - src[faceless]).max() <= 3  # only the encoder touched them
    assert np.abs(out[~faceless].astype(int) - src[~faceless]).max() > 40  # the face frames were dubbed


def test_a_source_over_the_frame_budget_is_dubbed_from_a_stream_with_the_same_result(catalog, tmp_path, monkeypatch):
    """A long source is never held decoded: analysis streams it (two passes), the renderer reads
    it in blocks on demand and keeps a few. Same output as the decoded-whole path, on a ping-pong
    retime that walks the source backwards across evicted blocks."""
    from facefab.media import frame_cache

    video = str(catalog.parent / "v0.mp4")  # 30 frames, 256x256
    audio = str(catalog.parent / "a17.wav")  # 1.62 s: ping-pong over the 1 s source
    config = DubConfig(score=False, watermark=False)

    def dub(name: str) -> tuple[dict, np.ndarray]:
        (row,) = run_local(build_operators(config), dub_inputs(video=video, audio=audio),
                           RunContext(str(tmp_path / name)))
        assert row["status"] == "ok", row["error"]
        return row, read_frames(row["out_uri"])

    whole_row, whole = dub("whole")
    frame_cache.clear()
    blocks: list[tuple[float, float | None]] = []
    decode = frame_cache.read_frames

    def counted(path, **kwargs):
        blocks.append((kwargs.get("start"), kwargs.get("end")))
        return decode(path, **kwargs)

    monkeypatch.setattr(frame_cache, "MAX_BYTES", 256 * 256 * 3 * 10)  # 10 frames
    monkeypatch.setattr(frame_cache.SeekableFrames, "BLOCK_BYTES", 256 * 256 * 3 * 4)  # 4-frame blocks
    monkeypatch.setattr(frame_cache, "read_frames", counted)
    streamed_row, streamed = dub("streamed")
    assert frame_cache._cache == {}  # nothing was decoded whole
    assert len(blocks) > 8 and all(start is not None for start, _ in blocks)  # 8 blocks, some decoded again
    for key in ("num_frames", "source_frames", "face_fraction", "fit", "mean_run"):
        assert streamed_row[key] == whole_row[key], key
    analysed = [arrays_of(r) for r in (whole_row, streamed_row)]
    for key, value in analysed[0].items():
        np.testing.assert_array_equal(analysed[1][key], value, err_msg=key)
    np.testing.assert_array_equal(streamed, whole)


def test_a_face_lost_for_a_moment_is_followed_again(catalog, tmp_path):
    """Eight black frames split the face track; the dub re-joins the pieces and dubs both."""
    face = read_frames(str(catalog.parent / "v0.mp4"))  # 30 frames
    frames = face.copy()
    frames[12:20] = 0
    video = str(tmp_path / "gap.mp4")
    write_video(video, frames, 30.0)
    config = DubConfig(score=False, watermark=False, max_duration=1.0)
    (row,) = run_local(build_operators(config), dub_inputs(video=video, audio=str(catalog.parent / "a17.wav")),
                       RunContext(str(tmp_path)))
    assert row["status"] == "ok", row["error"]
    valid = arrays_of(row)["valid"]
    assert valid[:12].all() and valid[20:].all() and not valid[12:20].any()
    assert row["undubbed_speech"] == 0.0  # the black frames show no face: nothing left undubbed


def test_speech_over_a_face_the_dub_cannot_follow_fails_the_row():
    from facefab.operators.dub import DubAnalyze, longest_run

    assert longest_run(np.array([0, 1, 1, 0, 1, 1, 1, 0], bool)) == (4, 3)
    assert longest_run(np.zeros(4, bool)) == (0, 0)
    analyze = DubAnalyze(DubConfig())
    speech = np.ones(100, bool)
    lost = np.zeros(100, bool)
    lost[40:52] = True  # 12 frames = 0.48 s at 25 fps: allowed
    assert analyze._check_coverage(speech, lost, 25.0) == 0.48
    lost[52:54] = True  # 0.56 s in a row
    with pytest.raises(Exception, match=r"0.6 s of the new speech \(output 1.6-2.2 s\)"):
        analyze._check_coverage(speech, lost, 25.0)
    assert analyze._check_coverage(np.zeros(100, bool), lost, 25.0) == 0.0  # silence over it is fine


def test_a_face_that_barely_talks_is_made_to_speak(shared_data, tmp_path):
    """talk_yongen hardly moves its lips: no real mouth frame shows speech, so the chosen mouth is
    warped open (with a synthesised cavity) to the shape the speech asks for."""
    video = str(shared_data / "videos" / "talk_yongen.mp4")
    audio = str(tmp_path / "speech.wav")
    write_audio(audio, read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), start=0.5, end=2.5), 16000)
    (row,) = run_local(build_operators(DubConfig(watermark=False, max_duration=2.0)),
                       dub_inputs(video=video, audio=audio), RunContext(str(tmp_path / "out")))
    assert row["status"] == "ok", row["error"]
    out = read_frames(row["out_uri"])
    src = read_frames(video, end=len(out) / row["fps"])
    opening_out = mouth_open_ratio(_face_landmarks(out))
    opening_src = mouth_open_ratio(_face_landmarks(src))
    print(f"opening std: output {np.nanstd(opening_out):.3f}, source {np.nanstd(opening_src):.3f}; "
          f"sync {row['sync_output']} (source {row['sync_source']})")
    assert np.nanstd(opening_out) >= 3 * np.nanstd(opening_src)
    assert row["sync_output"] >= 0.3 and row["sync_output"] > row["sync_source"] + 0.2


def test_the_same_dub_twice_gives_the_same_file_on_a_non_square_video(shared_data, tmp_path):
    video = str(tmp_path / "tall.mp4")  # 1 s of talk_sun at 288x384
    write_video(video, read_frames(str(shared_data / "videos" / "talk_sun.mp4"), end=1.0, size=(288, 384)), 25.0)
    audio = str(tmp_path / "speech.wav")
    write_audio(audio, read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), start=1.0, end=2.0), 16000)
    files = []
    for k in range(2):
        (row,) = run_local(build_operators(DubConfig(score=False)), dub_inputs(video=video, audio=audio),
                           RunContext(str(tmp_path / f"run{k}")))
        assert row["status"] == "ok", row["error"]
        files.append(open(row["out_uri"], "rb").read())
    assert files[0] == files[1]


def test_mytalk_path_runs_from_a_checkpoint(catalog, tmp_path):
    from facefab.models.mytalk import MyTalkMotion, MyTalkPipeline, MyTalkRenderer, tiny

    configs = tiny()
    checkpoint = str(tmp_path / "mytalk")
    MyTalkPipeline(MyTalkMotion(**configs["motion"]), MyTalkRenderer(**configs["renderer"])).save_pretrained(checkpoint)
    config = DubConfig(checkpoint=checkpoint, score=False)  # model "auto": a checkpoint selects MyTalk
    inputs = dub_inputs(video=str(catalog.parent / "v1.mp4"), audio=str(catalog.parent / "a3.wav"))
    (row,) = run_local(build_operators(config), inputs, RunContext(str(tmp_path / "out")))
    assert row["status"] == "ok", row["error"]
    assert row["model"] == "mytalk" and row["checkpoint"] == checkpoint
    info = probe(row["out_uri"])
    assert info.has_audio and abs(info.duration - row["duration"]) < 1e-3


def arrays_of(row: dict) -> dict[str, np.ndarray]:
    return unpack_arrays(row["_dub"])


# -- pure functions ------------------------------------------------------------------------------------

def test_retime_index_extends_or_trims():
    assert retime_index(4, 10, "pingpong").tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert retime_index(4, 6, "loop").tolist() == [0, 1, 2, 3, 0, 1]
    assert retime_index(4, 6, "hold").tolist() == [0, 1, 2, 3, 3, 3]
    assert retime_index(4, 6, "trim").tolist() == [0, 1, 2, 3]
    assert retime_index(10, 3, "pingpong").tolist() == [0, 1, 2]
    assert retime_index(1, 3, "pingpong").tolist() == [0, 0, 0]


def test_selection_replays_runs_of_matching_frames():
    shapes = np.stack([np.sin(np.arange(200) / 7.0), np.cos(np.arange(200) / 11.0)], axis=1)
    targets = shapes[60:100] + 0.01
    weights = np.ones(2)
    unary = (((shapes[None] - targets[:, None]) ** 2) * weights).sum(-1)
    choice = select_frames(unary, shapes, weights, WeightFreeConfig())
    assert np.abs(shapes[choice] - targets).max() < 0.1
    assert np.count_nonzero(np.diff(choice) != 1) <= 2  # one run, not a frame-by-frame shuffle


def test_a_cut_fades_the_old_run_out_under_the_new_one():
    choice = np.array([10, 11, 12, 40, 41, 42, 43, 44, 5, 6])
    usable = np.ones(50, bool)
    fade_from, weight = cross_fades(choice, usable, 3)
    assert fade_from.tolist() == [-1, -1, -1, 13, 14, 15, -1, -1, 45, 46]  # the second fade ends at the array end
    assert weight[3:6].tolist() == [0.25, 0.5, 0.75] and weight[6] == 1.0
    usable[14] = False  # the old run has no landmarks there: its fade stops
    assert cross_fades(choice, usable, 3)[0][3:6].tolist() == [13, -1, -1]
    crop, alpha = np.full((4, 4, 3), 200, np.uint8), np.ones((4, 4), np.float32)
    old, old_alpha = np.full((4, 4, 3), 100, np.uint8), np.zeros((4, 4), np.float32)
    old_alpha[:, :2] = 1.0
    mixed, a = dissolve(crop, alpha, old, old_alpha, 0.25)
    assert mixed[0, 0, 0] == 125 and mixed[0, 3, 0] == 200  # mixed where both cover, the new alone elsewhere
    assert a[0, 0] == 1.0 and a[0, 3] == 0.25


def _speech(rms: np.ndarray, vad: np.ndarray) -> Speech:
    return Speech(np.zeros((len(rms), 17, 80), np.float32), rms.astype(np.float32), vad)


def test_silence_closes_the_mouth_and_loudness_opens_it():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(300, 7))
    valid = np.ones(300, bool)
    model = MouthModel(bank, valid, None, 30.0, WeightFreeConfig(smooth_frames=1, open_smooth_frames=1))
    rms = np.r_[np.full(10, 0.001), np.linspace(0.01, 0.3, 20)]
    vad = np.r_[np.zeros(10, bool), np.ones(20, bool)]
    shapes = model.predict(_speech(rms, vad))
    assert np.allclose(shapes[:10], model.rest) and np.allclose(model.rest[OPENING], model.closed[OPENING])
    assert np.all(np.diff(shapes[10:, 0]) >= -1e-9) and shapes[-1, 0] > model.closed[0] + 1.0
    assert loudness_openness(_speech(rms, vad))[:10].max() == 0.0
    # A voice the detector misses (an exclamation, speech over noise): loud over the quiet floor
    # still opens the mouth; quiet frames without speech stay closed.
    missed = np.r_[np.zeros(10, bool), np.ones(10, bool), np.zeros(10, bool)]
    assert np.array_equal(sounding(_speech(rms, missed)), rms > 0.001 * 10 ** (12 / 20))
    shapes = model.predict(_speech(rms, missed))
    assert np.allclose(shapes[:10], model.rest) and shapes[-1, 0] > model.closed[0] + 1.0


def _track(i: int, box: tuple[float, float, float, float], frames: range) -> Track:
    n = len(frames)
    return Track(i, np.arange(frames.start, frames.stop), np.tile(np.array(box, np.float32), (n, 1)),
                 np.ones(n, bool), np.ones(n, np.float32))


def test_speaking_track_is_largest_central_or_chosen():
    big_corner = _track(0, (0, 0, 200, 200), range(100))
    small_centre = _track(1, (280, 280, 360, 360), range(100))
    big_passing = _track(2, (300, 0, 640, 340), range(10))
    tracks = [big_corner, small_centre, big_passing]
    assert select_track(tracks, "largest", (640, 640)) is big_corner
    assert select_track(tracks, "central", (640, 640)) is small_centre
    assert select_track(tracks, "2", (640, 640)) is big_passing


def test_inputs_are_stable_and_checked(tmp_path):
    a = dub_inputs(video="v.mp4", audio="a.wav")
    assert a[0]["id"] == dub_inputs(video="v.mp4", audio="a.wav")[0]["id"]
    assert a[0]["video_uri"] == os.path.abspath("v.mp4")
    table = tmp_path / "pairs.csv"
    pd.DataFrame({"video_uri": ["v.mp4", "v.mp4"], "audio_uri": ["a.wav", "b.wav"],
                  "out_name": ["same", "same"]}).to_csv(table, index=False)
    with pytest.raises(ValueError, match="more than one"):
        dub_inputs(str(table))
    pd.DataFrame({"video_uri": ["v.mp4"]}).to_csv(table, index=False)
    with pytest.raises(ValueError, match="audio_uri"):
        dub_inputs(str(table))
    with pytest.raises(ValueError, match="not both"):
        dub_inputs(str(table), video="v.mp4", audio="a.wav")
    pd.DataFrame({"video_uri": ["v.mp4", "w.mp4"], "audio_uri": ["a.wav", "a.wav"],
                  "out_name": [7, 8]}).to_csv(table, index=False)
    assert sorted(r["out_name"] for r in dub_inputs(str(table))) == ["7", "8"]  # numbers are names too


def test_http_inputs_are_refused_unless_allowed(tmp_path):
    from facefab.pipelines.engine import run_local

    config = DubConfig(score=False)
    rows = dub_inputs(video="http://169.254.169.254/latest/meta-data/v.mp4", audio=str(tmp_path / "a.wav"))
    (row,) = run_local(build_operators(config), rows, RunContext(str(tmp_path)))
    assert row["status"] == "failed" and "http inputs are off" in json.loads(row["error"])["message"]
    allowed = RunContext(str(tmp_path), allowed_input_roots=(str(tmp_path / "media"),))
    rows = dub_inputs(video=str(tmp_path / "elsewhere" / "v.mp4"), audio=str(tmp_path / "media" / "a.wav"))
    (row,) = run_local(build_operators(config), rows, allowed)
    assert row["status"] == "failed" and "outside the allowed input roots" in json.loads(row["error"])["message"]


def test_one_video_into_several_languages_is_analysed_once(shared_data, tmp_path):
    """Two new tracks for the same video: the second row reads the first's video analysis from
    ROOT/cache/dub_analysis (no face tracking, no mesh), and its dub is the one a fresh analysis gives."""
    video = str(shared_data / "videos" / "drive_d10.mp4")
    tracks = []
    for name, start in (("first", 0.0), ("second", 1.0)):
        path = str(tmp_path / f"{name}.wav")
        write_audio(path, read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), start=start, end=start + 2.0),
                    16000)
        tracks.append(path)
    config = DubConfig(score=False, watermark=False)
    rows = [row for audio in tracks for row in dub_inputs(video=video, audio=audio)]
    shared = run_local(build_operators(config), rows, RunContext(str(tmp_path / "shared")))
    assert [r["status"] for r in shared] == ["ok", "ok"], [r["error"] for r in shared]
    seconds = [json.loads(r["stage_seconds"]) for r in shared]
    assert "landmarks" in seconds[0] and "analysis_cache" not in seconds[0]
    assert "analysis_cache" in seconds[1] and "landmarks" not in seconds[1] and "faces" not in seconds[1]
    assert len(os.listdir(tmp_path / "shared" / "cache" / "dub_analysis")) == 1
    (fresh,) = run_local(build_operators(config), rows[1:], RunContext(str(tmp_path / "fresh")))
    assert np.array_equal(read_frames(fresh["out_uri"]), read_frames(shared[1]["out_uri"]))


def test_a_preprocess_root_stands_in_for_the_video_analysis(talking_root, talking_clips, shared_data, tmp_path):
    """--from-preprocess ROOT: a video the root has is dubbed from its face tracks (no detection, no mesh;
    the root's 25 fps tracks resampled to the video's 30 fps) and the dub matches an analysed one; a video
    it does not have is analysed; a root that is not one fails the row."""
    from facefab.face.scores import image_psnr

    video = talking_clips["drive_d10"]["video_uri"]
    audio = str(tmp_path / "new.wav")
    write_audio(audio, read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), end=2.0), 16000)
    rows = dub_inputs(video=video, audio=audio)
    reused_config = DubConfig(score=False, watermark=False, from_preprocess=talking_root)
    (reused,) = run_local(build_operators(reused_config), rows, RunContext(str(tmp_path / "reused")))
    assert reused["status"] == "ok", reused["error"]
    seconds = json.loads(reused["stage_seconds"])
    assert reused["analysis"] == "preprocess" and "analysis_preprocess" in seconds
    assert "faces" not in seconds  # the render still decodes the video, the analysis does not
    (fresh,) = run_local(build_operators(DubConfig(score=False, watermark=False)), rows,
                         RunContext(str(tmp_path / "fresh")))
    assert fresh["analysis"] == "analysed" and fresh["face_fraction"] == reused["face_fraction"]
    a, b = read_frames(reused["out_uri"]), read_frames(fresh["out_uri"])
    psnr = min(image_psnr(x, y) for x, y in zip(a, b, strict=True))
    print(f"dub from the preprocess root against an analysed dub: worst frame PSNR {psnr:.1f} dB")
    assert psnr >= 30

    other = dub_inputs(video=str(shared_data / "videos" / "drive_d6.mp4"), audio=audio)
    (analysed,) = run_local(build_operators(reused_config), other, RunContext(str(tmp_path / "other")))
    assert analysed["status"] == "ok" and analysed["analysis"] == "analysed"
    nowhere = DubConfig(score=False, from_preprocess=str(tmp_path / "nowhere"))
    (failed,) = run_local(build_operators(nowhere), rows, RunContext(str(tmp_path / "bad")))
    assert failed["status"] == "failed" and "has no preprocess manifest rows" in str(failed["error"])

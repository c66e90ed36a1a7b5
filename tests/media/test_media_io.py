"""Media IO on real files: probe, decode (decord and PyAV), resampling, rotation, encode/mux round
trip, clear errors and atomic writes (local, memory:// and a real S3 server)."""

from __future__ import annotations

import logging
import os
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from facefab.media import (
    MediaError,
    iter_frames,
    local_path,
    probe,
    read_audio,
    read_frames,
    read_metadata,
    set_codec_threads,
    write_audio,
    write_video,
)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def d6(shared_data: Path) -> str:
    return str(shared_data / "videos" / "drive_d6.mp4")


@pytest.fixture(scope="module")
def d0(shared_data: Path) -> str:
    return str(shared_data / "videos" / "drive_d0.mp4")


@pytest.fixture(scope="module")
def d6_2s(d6: str) -> np.ndarray:
    return read_frames(d6, start=0, end=2)


# ---------------------------------------------------------------------------------------------
# probe


def test_probe_video_with_audio(d6):
    info = probe(d6)
    assert (info.width, info.height, info.fps, info.num_frames) == (480, 480, 30.0, 312)  # bundled: 10.4 s
    assert info.duration == pytest.approx(10.4, abs=0.05)
    assert info.rotation == 0
    assert info.has_video and info.has_audio
    assert (info.audio_sample_rate, info.audio_channels) == (44100, 2)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.to_dict()["num_frames"] == 312


def test_probe_video_without_audio(d0):
    info = probe(d0)
    assert (info.width, info.height, info.fps, info.num_frames) == (512, 512, 25.0, 78)
    assert info.duration == pytest.approx(3.12, abs=0.01)
    assert info.has_video and not info.has_audio
    assert info.audio_sample_rate is None and info.audio_codec is None


def test_probe_wav(shared_data):
    info = probe(str(shared_data / "audio" / "speech_eng.wav"))
    assert not info.has_video and info.has_audio
    assert (info.audio_sample_rate, info.audio_channels) == (16000, 1)
    assert info.duration == pytest.approx(31.2, abs=0.01)  # bundled: the first 31.2 s
    assert (info.width, info.height, info.num_frames) == (0, 0, 0)


# ---------------------------------------------------------------------------------------------
# decoding


def test_fps_resampling_frame_count(shared_data):
    uri = str(shared_data / "videos" / "drive_d3.mp4")  # 30 fps
    info = probe(uri)
    frames = read_frames(uri, fps=25, size=(64, 64))
    assert frames.dtype == np.uint8 and frames.shape[1:] == (64, 64, 3)
    assert abs(len(frames) - round(info.duration * 25)) <= 1


def test_upsampling_repeats_nearest_frame(d0):
    native = read_frames(d0)
    doubled = read_frames(d0, fps=50)
    assert len(native) == 78 and len(doubled) == 156
    # Tick 2m/50 hits source frame m exactly; tick (2m+1)/50 is a tie, resolved to the earlier frame.
    np.testing.assert_array_equal(doubled[0::2], native)
    np.testing.assert_array_equal(doubled[1::2], native)


def test_window_and_resize(d6, d6_2s):
    assert d6_2s.shape == (60, 480, 480, 3)
    window = read_frames(d6, start=1, end=2)
    np.testing.assert_array_equal(window, d6_2s[30:60])
    small = read_frames(d6, start=1, end=2, size=(64, 48))  # size is (width, height)
    assert small.shape == (30, 48, 64, 3)
    assert read_frames(d6, start=40, end=41).shape == (0, 480, 480, 3)  # past the end: empty


def test_iter_frames_chunks(d0):
    chunks = list(iter_frames(d0, chunk=16))
    assert [len(c) for c in chunks] == [16, 16, 16, 16, 14]
    np.testing.assert_array_equal(np.concatenate(chunks), read_frames(d0))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_large_frames_decode_in_chunks_under_the_byte_cap(shared_data, backend):
    from facefab.media.io import DECODE_CHUNK_BYTES

    big = str(shared_data / "videos" / "talk_yongen.mp4")  # 704x1216: 2.5 MB per RGB frame
    chunks = list(iter_frames(big, end=1.5, chunk=128, backend=backend))
    per_chunk = DECODE_CHUNK_BYTES // (704 * 1216 * 3)
    assert [len(c) for c in chunks[:-1]] == [per_chunk] * (len(chunks) - 1)
    whole = read_frames(big, end=1.5, backend=backend)  # filled into one preallocated array
    assert len(whole) == 38 and whole.flags.c_contiguous
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(fps=25, start=0.5, end=2.5),
    dict(fps=20, start=0, end=1),  # every other tick is a tie between two source frames
])
def test_decord_and_pyav_agree(d6, d0, kwargs):
    uri = d0 if not kwargs else d6
    fast = read_frames(uri, backend="decord", **kwargs)
    slow = read_frames(uri, backend="pyav", **kwargs)
    assert len(fast) > 0
    np.testing.assert_array_equal(fast, slow)


def test_falls_back_to_pyav_when_decord_cannot_open(d0, monkeypatch, caplog):
    import decord

    def broken(*args, **kwargs):
        raise RuntimeError("Error reading file")

    monkeypatch.setattr(decord, "VideoReader", broken)
    with caplog.at_level(logging.WARNING):
        frames = read_frames(d0, fps=10)
    assert "decoding with PyAV" in caplog.text
    np.testing.assert_array_equal(frames, read_frames(d0, fps=10, backend="pyav"))
    with pytest.raises(MediaError, match="with decord"):
        read_frames(d0, backend="decord")


def test_falls_back_midway_without_losing_or_repeating_frames(d0, monkeypatch):
    import decord

    real = decord.VideoReader

    class FailsOnSecondBatch:
        def __init__(self, *args, **kwargs):
            self._reader, self._calls = real(*args, **kwargs), 0

        def __len__(self):
            return len(self._reader)

        def get_batch(self, indices):
            self._calls += 1
            if self._calls == 2:
                raise RuntimeError("decode error")
            return self._reader.get_batch(indices)

    monkeypatch.setattr(decord, "VideoReader", FailsOnSecondBatch)
    chunks = list(iter_frames(d0, chunk=20))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.concatenate(chunks), read_frames(d0, backend="pyav"))


def _write_rotated(path: Path, ccw_degrees: int) -> np.ndarray:
    """A 64x32 clip whose top-left quadrant is white, tagged with a display rotation."""
    image = np.zeros((32, 64, 3), np.uint8)
    image[:16, :32] = 255
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(ccw_degrees)
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return image


@pytest.mark.parametrize("ccw, clockwise", [(90, 270), (-90, 90), (180, 180)])
def test_rotation_is_applied(tmp_path, ccw, clockwise):
    path = tmp_path / "rotated.mp4"
    image = _write_rotated(path, ccw)
    expected = np.rot90(image, k=ccw // 90)
    info = probe(str(path))
    assert info.rotation == clockwise
    assert (info.height, info.width) == expected.shape[:2]
    for backend in ("decord", "pyav"):
        frames = read_frames(str(path), backend=backend)
        assert frames.shape == (3, *expected.shape)
        assert np.abs(frames[0].astype(int) - expected).mean() < 3
    assert read_frames(str(path), size=(10, 20)).shape == (3, 20, 10, 3)


# ---------------------------------------------------------------------------------------------
# audio


def test_read_wav_exact_and_windowed(shared_data):
    uri = str(shared_data / "audio" / "speech_eng.wav")
    with wave.open(uri) as raw:
        pcm = np.frombuffer(raw.readframes(raw.getnframes()), "<i2").astype(np.float32) / 32768
    audio = read_audio(uri)
    assert audio.dtype == np.float32 and audio.shape == (499200,)  # 31.2 s
    np.testing.assert_allclose(audio, pcm, atol=1e-4)
    np.testing.assert_array_equal(read_audio(uri, start=5, end=7), audio[80000:112000])
    assert read_audio(uri, sample_rate=8000, start=0, end=1).shape == (8000,)


def test_read_stereo_and_mp4_audio(shared_data, d6):
    stereo = read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), mono=False)
    assert stereo.shape == (2, 67200)  # 4.2 s (bundled) at 16 kHz
    track = read_audio(d6)
    assert abs(len(track) / 16000 - 10.4) < 0.05
    assert 0.05 < np.abs(track).max() <= 1.0
    window = read_audio(d6, start=8, end=10)
    assert window.shape == (32000,)


def test_read_audio_without_audio_stream(d0):
    with pytest.raises(MediaError, match="no audio"):
        read_audio(d0)


def test_write_audio_round_trip(tmp_path):
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo = np.stack([tone, -tone])
    write_audio(str(tmp_path / "out" / "tone.wav"), stereo, 16000)
    back = read_audio(str(tmp_path / "out" / "tone.wav"), mono=False)
    np.testing.assert_allclose(back, stereo, atol=1e-4)
    assert os.listdir(tmp_path / "out") == ["tone.wav"]


# ---------------------------------------------------------------------------------------------
# encoding


def test_encode_mux_round_trip(tmp_path, d6, d6_2s):
    audio = read_audio(d6, start=0, end=2)
    out = str(tmp_path / "clip.mp4")
    tags = {"comment": "made by facefab", "facefab:synthetic": "true"}
    write_video(out, d6_2s, 30, audio=audio, metadata=tags)

    info = probe(out)
    assert (info.num_frames, info.fps, info.width, info.height) == (60, 30.0, 480, 480)
    assert info.has_audio and info.audio_sample_rate == 16000
    back = read_frames(out)
    assert back.shape == d6_2s.shape
    assert _psnr(back, d6_2s) > 30
    back_audio = read_audio(out)
    assert abs(len(back_audio) - len(audio)) / 16000 < 0.05
    assert np.corrcoef(back_audio[:len(audio)], audio[:len(back_audio)])[0, 1] > 0.9
    assert tags.items() <= read_metadata(out).items()


def test_odd_size_frames_are_padded_to_even(tmp_path):
    yy, xx = np.mgrid[0:77, 0:101]
    frame = np.stack([xx * 2, yy * 3, (xx + yy)], axis=-1).astype(np.uint8)
    out = str(tmp_path / "odd.mp4")
    write_video(out, (frame for _ in range(5)), 25)  # a generator works too
    info = probe(out)
    assert (info.width, info.height, info.num_frames) == (102, 78, 5)
    back = read_frames(out)
    assert _psnr(back[:, :77, :101], np.broadcast_to(frame, (5, 77, 101, 3))) > 30


def test_failed_write_leaves_nothing_behind(tmp_path, d6_2s):
    def frames():
        yield from d6_2s[:10]
        raise RuntimeError("generator broke")

    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(RuntimeError, match="generator broke"):
        write_video(str(folder / "clip.mp4"), frames(), 30)
    assert os.listdir(folder) == []


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(str(tmp_path / "x.mp4"), np.zeros((2, 8, 8, 3), np.float32), 25)
    with pytest.raises(ValueError, match="one size"):
        write_video(str(tmp_path / "x.mp4"), [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], 25)
    with pytest.raises(ValueError, match="at least one frame"):
        write_video(str(tmp_path / "x.mp4"), [], 25)
    with pytest.raises(ValueError, match="use one of"):
        write_video(str(tmp_path / "x.avi"), np.zeros((1, 8, 8, 3), np.uint8), 25)
    with pytest.raises(ValueError, match="unknown x264 preset 'quick'"):
        write_video(str(tmp_path / "x.mp4"), np.zeros((1, 8, 8, 3), np.uint8), 25, preset="quick")
    assert os.listdir(tmp_path) == []


def test_single_threaded_codecs_give_the_same_frames(tmp_path, d6, d6_2s):
    # what a worker capped at one CPU does (engine.limit_threads): decode and encode still exact
    with pytest.raises(ValueError, match=">= 0"):
        set_codec_threads(-1)
    set_codec_threads(1)
    try:
        single = read_frames(d6, start=0, end=2)
        pyav_single = read_frames(d6, start=0, end=2, backend="pyav")
        write_video(str(tmp_path / "one.mp4"), single, 30, preset="veryfast")
        one = read_frames(str(tmp_path / "one.mp4"))
    finally:
        set_codec_threads(0)
    assert np.array_equal(single, d6_2s) and np.array_equal(pyav_single, d6_2s)
    write_video(str(tmp_path / "auto.mp4"), d6_2s, 30, preset="veryfast")
    auto = read_frames(str(tmp_path / "auto.mp4"))
    assert one.shape == auto.shape == d6_2s.shape
    assert abs(_psnr(one, d6_2s) - _psnr(auto, d6_2s)) < 0.5 and _psnr(one, d6_2s) > 35


# ---------------------------------------------------------------------------------------------
# errors


def test_random_bytes_are_a_clear_error(tmp_path):
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    for call in (probe, read_frames):
        with pytest.raises(MediaError, match=r"cannot open video '.*noise\.mp4': Invalid data"):
            call(str(bad))


def test_truncated_copies_are_a_clear_error(tmp_path, d6, d6_2s):
    # drive_d6 keeps its index at the end: a cut copy cannot be opened at all.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(Path(d6).read_bytes()[:300_000])
    with pytest.raises(MediaError, match=r"cannot open video '.*cut\.mp4'"):
        read_frames(str(cut))
    # Our own files keep the index first: the cut is found when the frame data runs out.
    whole = tmp_path / "whole.mp4"
    write_video(str(whole), d6_2s, 30)
    half = tmp_path / "half.mp4"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for backend in ("auto", "pyav"):
        with pytest.raises(MediaError, match="truncated"):
            read_frames(str(half), backend=backend)


def test_missing_file_and_missing_streams(tmp_path, shared_data):
    missing = str(tmp_path / "nope.mp4")
    for call in (probe, read_frames, read_audio, read_metadata):
        with pytest.raises(MediaError, match="not found: '.*nope.mp4'"):
            call(missing)
    with pytest.raises(MediaError, match="has no video stream"):
        read_frames(str(shared_data / "audio" / "speech_eng.wav"))


# ---------------------------------------------------------------------------------------------
# storage


def test_local_path_passes_local_files_through(d0):
    with local_path(d0) as path:
        assert path == d0
    with local_path("file://" + d0) as path:
        assert path == d0


def test_remote_round_trip_in_memory(d0):
    import fsspec

    frames = read_frames(d0, end=0.4)
    uri = "memory://media-test/clips/clip.mp4"
    write_video(uri, frames, 25, audio=np.zeros(8000, np.float32), metadata={"comment": "mem"})
    fs = fsspec.filesystem("memory")
    assert fs.ls("/media-test/clips", detail=False) == ["/media-test/clips/clip.mp4"]
    assert probe(uri).num_frames == 10
    assert read_metadata(uri)["comment"] == "mem"
    assert _psnr(read_frames(uri), frames) > 30
    with local_path(uri) as path:
        assert os.path.isfile(path)
    assert not os.path.exists(path)
    fs.rm("/media-test", recursive=True)


@pytest.mark.s3
def test_s3_round_trip(s3_root, d0, tmp_path):
    root, opts = s3_root
    frames = read_frames(d0, end=0.4)
    write_video(f"{root}/clip.mp4", frames, 25, storage_options=opts)
    write_audio(f"{root}/tone.wav", np.zeros(1600, np.float32), 16000, storage_options=opts)
    assert probe(f"{root}/clip.mp4", storage_options=opts).num_frames == 10
    assert _psnr(read_frames(f"{root}/clip.mp4", storage_options=opts), frames) > 30
    assert read_audio(f"{root}/tone.wav", storage_options=opts).shape == (1600,)
    with pytest.raises(MediaError, match="not found"):
        probe(f"{root}/missing.mp4", storage_options=opts)

"""Re-create the bundled test media in tests/data from a full shared/data folder.

    python tests/data/make_test_media.py PATH/TO/shared/data

Every file keeps its original name, resolution and frame rate, and (except one resampled wav)
its audio format; each is cut to the seconds the tests read, always from 0 s, so a test reads
the same moments of a clip whether it runs on these copies or on the full originals. See
README.md next to this script for the sources, the licence and the same table of cuts.

Videos are re-encoded with facefab's own `write_video` (H.264, CRF 23-26, preset medium, AAC
audio at the source's rate and channel count where the source has audio) and then remuxed
(packets copied, nothing re-encoded) so the index (moov) sits at the end of the file as in the
originals: tests/media/test_media_io.py and tests/pipelines/test_engine.py rely on a cut copy of
drive_d6 being unreadable. Audio is written with `write_audio` (16-bit PCM wav). Portraits are
re-encoded as JPEG (and the large ones downscaled) to about 60 KB or less each.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import av
import cv2

from facefab.media import probe, read_audio, read_frames, write_audio, write_video

HERE = Path(__file__).resolve().parent

# name: (end s, CRF, why). Every cut starts at 0 s.
VIDEOS = {
    # whole file (3.12 s, 78 frames): test_media_io checks its frame count and duration
    "drive_d0.mp4": (None, 24, ("whole: probe/iter_frames/upsampling (78 frames), face operators 0.5-2.5 s, "
                                "train 0-2 s, dub cut 0.5-1.5 s, provenance 0.4 s")),
    # > 10 s so ShotClips splits it in two (test_engine); train reads 8-10 s; dub the first 4 s
    "drive_d3.mp4": (10.4, 26, ("0-10.4 s: engine (> 10 s: two clips), train 0-2/4-6/8-10 s, dub 0-4 s, "
                                "dub cut 1-2 s, fps resampling, provenance 25 frames, preprocess")),
    # > 10 s (test_engine's third video: two clips); > 300 kB (test_media_io cuts it at 300 kB)
    "drive_d6.mp4": (10.4, 23, ("0-10.4 s: media IO 0-2 s and audio 8-10 s, feature operators 2-7 s, face "
                                "operators 2-3 s, generation 2-2.6 and 3-4.2 s, MyTalk e2e 0-4 s, dub cuts "
                                "2-3 and 9-10 s, provenance 0-1.7 s, engine (two clips), preprocess")),
    "drive_d10.mp4": (7.2, 26, ("0-7.2 s: feature operators (audio 2-7 s), MyTalk e2e 0-4 s, dub cut 3-4 s, "
                                "preprocess")),
    "drive_d14.mp4": (3.0, 26, "0-3 s: dub cut 1-2 s, preprocess"),
    "talk_sun.mp4": (3.0, 26, "0-3 s: provenance 25 frames, preprocess"),
    "talk_yongen.mp4": (2.0, 26, "0-2 s: media IO 0-1.5 s (38 frames), provenance 25 frames, preprocess"),
}

# name: (end s, sample rate or None to keep, mono, why). Every cut starts at 0 s.
AUDIO = {
    # test_media_io reads it as stereo; `facefab dub` muxes it at its own 44.1 kHz (test_dub)
    "speech_hallo1.wav": (4.2, None, False, ("0-4.2 s, stereo 44.1 kHz kept: dub 0-4 s (output at 44.1 kHz), "
                                             "stereo read, feature operators 0-3 s, generation 1-2.2 s")),
    "speech_hallo2.wav": (3.6, 16000, True, "0-3.6 s, mono 16 kHz: dub catalog 2-3.56 s (read at 16 kHz)"),
    # the whisper test encodes 0-31 s (more than one 30 s window)
    "speech_eng.wav": (31.2, None, True, ("0-31.2 s (mono 16 kHz as the source): whisper 0-31 s, "
                                          "media IO 5-7 s, dub catalog 10-11.6 s")),
}

# name: (longest side in px or None to keep, JPEG quality, why)
PORTRAITS = {
    "hallo_2.jpg": (None, 90, "441 px kept: two-faces test (the pair's width), flow test"),
    "hallo_3.jpg": (640, 84, "979 -> 640 px: mirrored-yaw test"),
    "lp_s1.jpg": (512, 88, "1145 -> 512 px: the makeup reference (pink lips, blush, eye shadow)"),
    "lp_s9.jpg": (640, 84, "720x1280 -> 360x640 px: two-faces test, mirrored-yaw test"),
}


def remux_index_last(src: str, dst: str) -> None:
    """Copy the packets of `src` into `dst` without +faststart: the moov box goes last."""
    with av.open(src) as inp, av.open(dst, "w", format="mp4") as out:
        out.metadata.update(inp.metadata)
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:  # the demuxer's flush packets
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def make_video(src: Path, dst: Path, end: float | None, crf: int) -> None:
    info = probe(str(src))
    frames = read_frames(str(src), end=end)
    audio = None
    if info.has_audio:
        audio = read_audio(str(src), sample_rate=info.audio_sample_rate, mono=info.audio_channels == 1, end=end)
    tmp = str(dst.with_suffix(".faststart.mp4"))
    write_video(tmp, frames, info.fps, audio=audio, audio_rate=info.audio_sample_rate or 16000, crf=crf)
    try:
        remux_index_last(tmp, str(dst))
    finally:
        os.remove(tmp)


def make_audio(src: Path, dst: Path, end: float, rate: int | None, mono: bool) -> None:
    info = probe(str(src))
    rate = rate or info.audio_sample_rate
    write_audio(str(dst), read_audio(str(src), sample_rate=rate, mono=mono, end=end), rate)


def make_portrait(src: Path, dst: Path, side: int | None, quality: int) -> None:
    image = cv2.imread(str(src))
    if side is not None and max(image.shape[:2]) > side:
        scale = side / max(image.shape[:2])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    dst.write_bytes(data.tobytes())


def main(shared: Path) -> None:
    for folder in ("videos", "audio", "portraits"):
        (HERE / folder).mkdir(exist_ok=True)
    for name, (end, crf, why) in VIDEOS.items():
        make_video(shared / "videos" / name, HERE / "videos" / name, end, crf)
        print(f"videos/{name}: {why}")
    for name, (end, rate, mono, why) in AUDIO.items():
        make_audio(shared / "audio" / name, HERE / "audio" / name, end, rate, mono)
        print(f"audio/{name}: {why}")
    for name, (side, quality, why) in PORTRAITS.items():
        make_portrait(shared / "portraits" / name, HERE / "portraits" / name, side, quality)
        print(f"portraits/{name}: {why}")
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file() and p.suffix in (".mp4", ".wav", ".jpg"))
    print(f"total media: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data"))

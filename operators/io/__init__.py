"""Media IO: the only place in facefab that decodes or encodes audio/video (see media.py)."""

from facefab.operators.io.media import (
    MediaError,
    MediaInfo,
    iter_frames,
    local_path,
    probe,
    read_audio,
    read_frames,
    read_metadata,
    resize_frames,
    set_codec_threads,
    write_audio,
    write_video,
)

__all__ = [
    "MediaError",
    "MediaInfo",
    "iter_frames",
    "local_path",
    "probe",
    "read_audio",
    "read_frames",
    "read_metadata",
    "resize_frames",
    "set_codec_threads",
    "write_audio",
    "write_video",
]

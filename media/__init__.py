"""Media: the only place in facefab that decodes, encodes or muxes audio/video (io.py); the
per-process frame cache (frame_cache.py); numpy artifact IO (arrays.py); provenance of generated
files: synthetic tag, invisible watermark, C2PA (provenance.py)."""

from .io import (
    MediaError,
    MediaInfo,
    frame_times,
    is_image,
    iter_frames,
    local_path,
    probe,
    read_audio,
    read_frames,
    read_image,
    read_metadata,
    resize_frames,
    set_codec_threads,
    write_audio,
    write_image,
    write_video,
)

__all__ = [
    "MediaError",
    "MediaInfo",
    "frame_times",
    "is_image",
    "iter_frames",
    "local_path",
    "probe",
    "read_audio",
    "read_frames",
    "read_image",
    "read_metadata",
    "resize_frames",
    "set_codec_threads",
    "write_audio",
    "write_image",
    "write_video",
]

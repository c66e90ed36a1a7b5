"""The faces of a video a generator edits in place (dub, makeup, swap): detected every few frames,
tracked, and meshed frame by frame along each track, with the preprocess stages' own settings
(`faces` is FaceTrack.Config, `landmarks` FaceLandmarks.Config)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import OperatorError


@dataclass
class MeshedTrack:
    """One tracked face: its frames and (T, 478, 3) mesh in frame pixels (NaN where the mesh failed)."""

    track_id: int
    frame_index: np.ndarray  # (T,) int, contiguous
    landmarks: np.ndarray
    found: np.ndarray  # (T,) bool


def fill_short_gaps(points: np.ndarray, found: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks linearly interpolated over runs of at most `max_gap` frames where the mesh missed
    the face (between two found frames), so a single miss mid-speech does not show the original
    mouth for a frame."""
    points, found = points.copy(), found.copy()
    known = np.flatnonzero(found)
    for before, after in itertools.pairwise(known):
        if 1 < after - before <= max_gap + 1:
            w = (np.arange(before + 1, after) - before)[:, None, None] / (after - before)
            points[before + 1:after] = (1 - w) * points[before] + w * points[after]
            found[before + 1:after] = True
    return points, found


def detect_and_track(frames, detect, every: int, faces: Any, fps: float, uri: str) -> tuple[list, list[list]]:
    """(tracks, detections) of the frames (an array or a stream, read once): faces detected on every
    `every`th frame and the last, linked into tracks; OperatorError naming the video when none stays."""
    from facefab.face.detection import detect_sparse, track_faces

    detections = detect_sparse(frames, detect, every)
    n = len(detections)
    if n == 0:
        raise OperatorError(f"source video '{uri}' decoded to 0 frames")
    tracks = track_faces(detections, iou_threshold=faces.iou_threshold, max_gap_frames=max(faces.max_gap_frames, every),
                         min_track_frames=min(faces.min_track_frames, n), smooth_window=faces.smooth_window,
                         join_gap_frames=max(1, round(fps)))
    if not tracks:
        raise OperatorError(f"no face found in {n} frames of '{uri}'" if not any(detections) else
                            f"no face stays for {faces.min_track_frames} frames in '{uri}'")
    return tracks, detections


def mesh_tracks(frames, tracks: list, mesher, max_gap_frames: int, smooth_window: int = 1) -> list[MeshedTrack]:
    """Each track meshed along its boxes, short gaps filled, optionally smoothed over time
    (`smooth_window` frames, centred, over the frames where it was found)."""
    from facefab.face.mesh import mesh_track
    from facefab.face.smoothing import moving_average
    from facefab.media.frame_cache import take

    out = []
    for track in tracks:
        marks, found = mesh_track(take(frames, track.frame_index), track.bbox, mesher)
        marks, found = fill_short_gaps(marks, found, max_gap_frames)
        if smooth_window > 1 and found.sum() > 1:
            seen = marks[found]
            marks[found] = moving_average(seen.reshape(len(seen), -1), smooth_window).reshape(seen.shape)
        out.append(MeshedTrack(track.track_id, track.frame_index, marks, found))
    return out


def probe_video(uri: str, storage_options: dict | None, what: str = "source video"):
    """The video's MediaInfo; OperatorError when it cannot be read or has no video stream."""
    from facefab.media import MediaError, probe

    try:
        info = probe(uri, storage_options)
    except MediaError as e:
        raise OperatorError(f"{what}: {e}") from e
    if not info.has_video or not info.fps:
        raise OperatorError(f"{what} '{uri}' has no video stream")
    return info


def decoded_or_streamed(path: str, info, seconds: float | None, timer):
    """The first `seconds` of a local video (all of it when None or longer): decoded once when they fit
    the frame budget (media.frame_cache.MAX_BYTES), through the worker's frame cache so a later stage of
    the same chain reads them from memory, else a stream decoded again on each pass."""
    from facefab.media.frame_cache import StreamedFrames, cached_frames, fits_in_memory

    end = seconds if seconds is not None and seconds < info.duration else None
    if not fits_in_memory((end or info.duration) * info.fps, info.width, info.height):
        return StreamedFrames(path, fps=None, start=None, end=end)
    with timer("decode"):
        return cached_frames(path, end=end)


def select_track(tracks: list, how: str, frame_wh: tuple[int, int]):
    """The speaking face's track: "largest" (most box area summed over frames, so a big face that
    stays wins over a bigger one passing by), "central" (nearest the frame centre among tracks at
    least half as long as the longest) or a track number."""
    if how.isdigit():
        if int(how) >= len(tracks):
            raise OperatorError(f"track {how} requested but the video has {len(tracks)} face track(s)")
        return tracks[int(how)]
    if how == "largest":
        return max(tracks, key=lambda tr: float(np.prod(tr.bbox[:, 2:] - tr.bbox[:, :2], axis=1).sum()))
    longest = max(len(tr) for tr in tracks)
    centre = np.asarray(frame_wh, np.float64) / 2

    def distance(tr) -> float:
        mid = (tr.bbox[:, :2] + tr.bbox[:, 2:]) / 2
        return float(np.linalg.norm((mid - centre) / centre, axis=1).mean())

    return min((tr for tr in tracks if 2 * len(tr) >= longest), key=distance)


def reference_face(uri: str, detector, mesher, min_face_px: int, face_index: int | None, timer,
                   storage_options: dict | None = None) -> tuple[np.ndarray, list, np.ndarray]:
    """(the reference image (H, W, 3) uint8 RGB, the faces found on it largest first, the chosen face's
    (478, 3) mesh). No face, several faces without `face_index`, or no mesh fail the row."""
    from facefab.face.detection import detect_faces
    from facefab.media import MediaError, read_image

    with timer("decode"):
        try:
            image = read_image(uri, storage_options)
        except MediaError as e:
            raise OperatorError(f"reference: {e}") from e
    with timer("face"):
        faces = sorted(detect_faces(image[None], detector, min_face_px=min_face_px)[0],
                       key=lambda d: -float((d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1])))
        if not faces:
            raise OperatorError(f"reference '{uri}': no face found")
        if face_index is None and len(faces) > 1:
            raise OperatorError(f"reference '{uri}' shows {len(faces)} faces: choose one with --face-index "
                                "(0: the largest)")
        if face_index is not None and not 0 <= face_index < len(faces):
            raise OperatorError(f"reference '{uri}' shows {len(faces)} face(s); --face-index {face_index} is out "
                                "of range")
        points = mesher(image, faces[face_index or 0].bbox)
        if points is None:
            raise OperatorError(f"reference '{uri}': the face mesh found no landmarks on the face")
    return image, faces, np.asarray(points, np.float64)


def muxable_audio(uri: str, info, seconds: float, rate: int, storage_options: dict | None,
                  what: str = "source video") -> np.ndarray | None:
    """The video's own sound at `rate`, mono or stereo (surround averaged), cut to `seconds`; None
    without a sound track."""
    from facefab.media import MediaError, read_audio

    if not info.has_audio:
        return None
    try:
        audio = read_audio(uri, sample_rate=rate, mono=False, end=seconds, storage_options=storage_options)
    except MediaError as e:
        raise OperatorError(f"{what}'s audio: {e}") from e
    return audio.mean(axis=0) if len(audio) > 2 else audio


__all__ = ["MeshedTrack", "decoded_or_streamed", "detect_and_track", "fill_short_gaps", "mesh_tracks", "muxable_audio",
           "probe_video", "reference_face", "select_track"]

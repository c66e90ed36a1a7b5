"""Face detection (MediaPipe BlazeFace) and IoU tracking of detections into per-face tracks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .smoothing import moving_average

DETECTOR_MODELS = {"short": 0, "full": 1}  # MediaPipe model_selection: <2 m vs. <5 m from camera


@dataclass
class Detection:
    bbox: np.ndarray  # (4,) float32 x0, y0, x1, y1 in source pixels
    score: float


@dataclass
class Track:
    track_id: int
    frame_index: np.ndarray  # (T,) int, contiguous
    bbox: np.ndarray  # (T, 4) float32
    present: np.ndarray  # (T,) bool: detected in that frame (False = interpolated)
    score: np.ndarray  # (T,) float32, 0 where interpolated

    def __len__(self) -> int:
        return len(self.frame_index)


# -- detection ---------------------------------------------------------------------------------

class FaceDetector:
    """MediaPipe face detector for RGB frames; boxes come back in source pixels."""

    def __init__(self, model: str = "full", min_confidence: float = 0.5, max_side: int | None = 640):
        import mediapipe as mp

        if model not in DETECTOR_MODELS:
            raise ValueError(f"detector model must be one of {sorted(DETECTOR_MODELS)}, got {model!r}")
        self.max_side = max_side
        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=DETECTOR_MODELS[model], min_detection_confidence=min_confidence)

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        height, width = frame.shape[:2]
        result = self._detector.process(_downscaled(frame, self.max_side))
        detections = []
        for det in result.detections or []:
            box = det.location_data.relative_bounding_box
            x0, y0 = box.xmin * width, box.ymin * height
            bbox = np.array([x0, y0, x0 + box.width * width, y0 + box.height * height], np.float32)
            detections.append(Detection(_clip_box(bbox, width, height), float(det.score[0])))
        return detections

    def close(self) -> None:
        self._detector.close()


def _downscaled(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    # Relative boxes make the scale invisible to callers; the detector works at 128/192 px anyway.
    longest = max(frame.shape[:2])
    if not max_side or longest <= max_side:
        return np.ascontiguousarray(frame)
    scale = max_side / longest
    size = (round(frame.shape[1] * scale), round(frame.shape[0] * scale))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _clip_box(bbox: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.clip(bbox, 0, [width, height, width, height]).astype(np.float32)


def detect_faces(frames: np.ndarray, detector: FaceDetector | None = None, *,
                 min_face_px: float = 0.0, **detector_kwargs: Any) -> list[list[Detection]]:
    """Detections per frame of (T,H,W,3) uint8 RGB frames; faces smaller than `min_face_px`
    (shorter box side) are dropped."""
    own = detector is None
    detector = detector or FaceDetector(**detector_kwargs)
    try:
        return detect_sparse(frames, detector, 1, min_face_px=min_face_px)
    finally:
        if own:
            detector.close()


def detect_sparse(frames: Iterable[np.ndarray], detector: Callable[[np.ndarray], list[Detection]],
                  every: int = 1, *,
                  min_face_px: float = 0.0) -> list[list[Detection]]:
    """Detections of every `every`th frame and of the last (so a track reaches the end), empty
    lists between: the frames (an array or any iterable, read once) are detected sparsely and
    `track_faces` interpolates the boxes in between."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    detections: list[list[Detection]] = []
    last = None
    for i, frame in enumerate(frames):
        detections.append(detector(frame) if i % every == 0 else [])
        last = frame
    if detections and (len(detections) - 1) % every:
        detections[-1] = detector(last)
    return [[d for d in dets if _short_side(d.bbox) >= min_face_px] for dets in detections]


def _short_side(bbox: np.ndarray) -> float:
    return float(min(bbox[2] - bbox[0], bbox[3] - bbox[1]))


# -- tracking ----------------------------------------------------------------------------------

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between boxes a (N,4) and b (M,4), x0,y0,x1,y1."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


@dataclass
class _OpenTrack:
    frames: list[int] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)

    @property
    def last_frame(self) -> int:
        return self.frames[-1]

    @property
    def last_box(self) -> np.ndarray:
        return self.detections[-1].bbox


def _greedy_matches(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """(track, detection) pairs, best IoU first, each side used at most once."""
    pairs = []
    used_tracks, used_dets = set(), set()
    for flat in np.argsort(-iou, axis=None):
        t, d = np.unravel_index(flat, iou.shape)
        if iou[t, d] < threshold:
            break
        if t not in used_tracks and d not in used_dets:
            pairs.append((int(t), int(d)))
            used_tracks.add(t)
            used_dets.add(d)
    return pairs


def link_detections(detections: list[list[Detection]], *, iou_threshold: float = 0.3,
                    max_gap_frames: int = 5) -> list[_OpenTrack]:
    """Greedy frame-to-frame IoU association; returns raw tracks in order of first appearance."""
    open_tracks: list[_OpenTrack] = []
    closed: list[_OpenTrack] = []
    for frame, dets in enumerate(detections):
        still_open = [t for t in open_tracks if frame - t.last_frame <= max_gap_frames + 1]
        closed += [t for t in open_tracks if frame - t.last_frame > max_gap_frames + 1]
        open_tracks = still_open
        matched = set()
        if open_tracks and dets:
            iou = box_iou(np.stack([t.last_box for t in open_tracks]), np.stack([d.bbox for d in dets]))
            for t, d in _greedy_matches(iou, iou_threshold):
                open_tracks[t].frames.append(frame)
                open_tracks[t].detections.append(dets[d])
                matched.add(d)
        open_tracks += [_OpenTrack([frame], [det]) for i, det in enumerate(dets) if i not in matched]
    # ids by first frame, then left to right, so reruns and simultaneous faces number stably
    return sorted(closed + open_tracks, key=lambda t: (t.frames[0], float(t.detections[0].bbox[0])))


def _same_place(a: np.ndarray, b: np.ndarray) -> bool:
    """Two boxes of one face a moment apart: centres within half a box side, sides within 1.5x."""
    size_a, size_b = a[2:] - a[:2], b[2:] - b[:2]
    if (size_a <= 0).any() or (size_b <= 0).any():
        return False
    ratio = np.sqrt(np.prod(size_a) / np.prod(size_b))
    shift = np.linalg.norm((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2)
    return bool(1 / 1.5 <= ratio <= 1.5 and shift <= 0.5 * float(np.sqrt(np.prod(size_a))))


def join_tracks(raw: list[_OpenTrack], max_gap_frames: int) -> list[_OpenTrack]:
    """Re-joins the pieces of one face's track that linking split (a fast turn, a missed stretch
    of detections): a track that starts at most `max_gap_frames` after another ended, where that
    one's last box is, continues it. Simultaneous faces never join (one must end first)."""
    joined: list[_OpenTrack] = []
    for track in sorted(raw, key=lambda t: t.frames[0]):
        ended = [j for j in joined if j.last_frame < track.frames[0] <= j.last_frame + max_gap_frames + 1
                 and _same_place(j.last_box, track.detections[0].bbox)]
        if ended:
            head = max(ended, key=lambda j: j.last_frame)
            head.frames += track.frames
            head.detections += track.detections
        else:
            joined.append(_OpenTrack(list(track.frames), list(track.detections)))
    return sorted(joined, key=lambda t: (t.frames[0], float(t.detections[0].bbox[0])))





def _dense_track(raw: _OpenTrack, track_id: int, smooth_window: int) -> Track:
    frame_index = np.arange(raw.frames[0], raw.frames[-1] + 1)
    observed = np.asarray(raw.frames) - raw.frames[0]
    boxes = np.stack([d.bbox for d in raw.detections]).astype(np.float64)
    present = np.zeros(len(frame_index), bool)
    present[observed] = True
    score = np.zeros(len(frame_index), np.float32)
    score[observed] = [d.score for d in raw.detections]
    dense = np.stack([np.interp(np.arange(len(frame_index)), observed, boxes[:, k]) for k in range(4)], axis=1)
    smoothed = moving_average(dense, smooth_window).astype(np.float32)
    return Track(track_id, frame_index, smoothed, present, score)


def track_faces(detections: list[list[Detection]], *, iou_threshold: float = 0.3, max_gap_frames: int = 5,
                min_track_frames: int = 25, smooth_window: int = 5, join_gap_frames: int = 0) -> list[Track]:
    """Tracks (with gaps <= max_gap_frames interpolated) of at least `min_track_frames` frames,
    numbered 0.. by first frame, then left to right. join_gap_frames > 0: pieces of one face's
    track up to that many frames apart are re-joined (`join_tracks`) and the gap interpolated."""
    raw = link_detections(detections, iou_threshold=iou_threshold, max_gap_frames=max_gap_frames)
    if join_gap_frames > 0:
        raw = join_tracks(raw, join_gap_frames)
    dense = [_dense_track(t, i, smooth_window) for i, t in enumerate(raw)]
    kept = [t for t in dense if len(t) >= min_track_frames]
    for new_id, track in enumerate(kept):
        track.track_id = new_id
    return kept


def max_simultaneous(tracks: list[Track], num_frames: int) -> int:
    counts = np.zeros(max(num_frames, 1), int)
    for track in tracks:
        counts[track.frame_index] += 1
    return int(counts.max())

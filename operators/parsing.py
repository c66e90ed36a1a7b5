"""Face parsing: per-frame label masks of a track in its aligned crop space.

Face parts are polygons of the MediaPipe face-mesh contours (`face_mesh_connections.FACEMESH_*`),
moved into the crop with the track's frame->crop affine; the rest of the person (hair, neck,
shoulders) comes from MediaPipe selfie segmentation run on the crop itself.

A label id is its position in LABEL_NAMES (stored with the masks as `label_names`). "left" and
"right" follow MediaPipe: the subject's own left, the image's right side in a frontal view.

Also home of the small crop-space helpers the other feature operators share (`read_crop`,
`landmarks_in_crop`, `mouth_open_ratio`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from facefab.operators.arrays import save_npz, unpack_arrays
from facefab.operators.base import Operator, OperatorError, Resources
from facefab.operators.clipframes import cached_frames

LABEL_NAMES = ("background", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "nose",
               "upper_lip", "lower_lip", "inner_mouth", "hair_other")
LABELS = {name: i for i, name in enumerate(LABEL_NAMES)}

# Mesh indices used for mouth geometry: inner-lip centre (upper, lower) and inner-lip corners.
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
MOUTH_CORNERS_INNER = (78, 308)
MOUTH_CORNERS_OUTER = (61, 291)
UPPER_OUTER_LIP = 0

# Decoded crops may differ from the landmark count by one frame (encoder rounding at the end).
FRAME_COUNT_TOLERANCE = 1


# -- mesh contours ------------------------------------------------------------------------------

def edge_paths(edges) -> list[list[int]]:
    """Chain an undirected edge set into ordered vertex paths (closed loops and open polylines)."""
    neighbours: dict[int, set[int]] = defaultdict(set)
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    unused = {frozenset(e) for e in edges}
    paths = []
    while unused:
        ends = sorted(v for v, n in neighbours.items() if len(n) == 1 and any(v in e for e in unused))
        start = ends[0] if ends else min(v for e in unused for v in e)
        path = [start]
        while True:
            step = next((n for n in sorted(neighbours[path[-1]]) if frozenset((path[-1], n)) in unused), None)
            if step is None:
                break
            unused.discard(frozenset((path[-1], step)))
            if step == start:
                break
            path.append(step)
        paths.append(path)
    return paths


def arc_between(loop: list[int], a: int, b: int, through: int) -> list[int]:
    """The arc of a closed loop from vertex `a` to vertex `b` that passes `through`."""
    i = loop.index(a)
    rotated = loop[i:] + loop[:i]
    j = rotated.index(b)
    forward = rotated[: j + 1]
    return forward if through in forward else [a] + rotated[j:][::-1]


@dataclass(frozen=True)
class FaceContours:
    """Index polygons of the face parts (built once from MediaPipe's connection sets)."""

    face_oval: list[int]
    brows: dict[str, tuple[list[int], list[int]]]  # label -> two open polylines (lower, upper edge)
    eyes: dict[str, list[int]]
    nose: list[int]  # a point set: its convex hull is the nose region
    upper_lip: list[int]
    outer_lips: list[int]
    inner_mouth: list[int]

    @classmethod
    def from_mediapipe(cls) -> FaceContours:
        import mediapipe as mp

        conn = mp.solutions.face_mesh_connections
        lip_loops = edge_paths(conn.FACEMESH_LIPS)
        outer = next(p for p in lip_loops if MOUTH_CORNERS_OUTER[0] in p)
        inner = next(p for p in lip_loops if MOUTH_CORNERS_INNER[0] in p)
        upper_outer = arc_between(outer, *MOUTH_CORNERS_OUTER, through=UPPER_OUTER_LIP)
        upper_inner = arc_between(inner, *MOUTH_CORNERS_INNER, through=UPPER_INNER_LIP)
        nose = sorted({i for e in conn.FACEMESH_NOSE for i in e})
        return cls(
            face_oval=edge_paths(conn.FACEMESH_FACE_OVAL)[0],
            brows={"left_brow": tuple(edge_paths(conn.FACEMESH_LEFT_EYEBROW)),
                   "right_brow": tuple(edge_paths(conn.FACEMESH_RIGHT_EYEBROW))},
            eyes={"left_eye": edge_paths(conn.FACEMESH_LEFT_EYE)[0],
                  "right_eye": edge_paths(conn.FACEMESH_RIGHT_EYE)[0]},
            nose=nose,
            upper_lip=upper_outer + upper_inner[::-1],
            outer_lips=outer,
            inner_mouth=inner,
        )


def _brow_polygon(points: np.ndarray, lines: tuple[list[int], list[int]]) -> np.ndarray:
    """Join the brow's two edge polylines into one ring (second one reversed if needed)."""
    a, b = points[lines[0]], points[lines[1]]
    if np.linalg.norm(a[-1] - b[0]) < np.linalg.norm(a[-1] - b[-1]):
        return np.concatenate([a, b])
    return np.concatenate([a, b[::-1]])


def _fill(mask: np.ndarray, polygon: np.ndarray, label: int) -> None:
    shift = 4  # sub-pixel vertex precision: small parts (eyes at 256 px) keep their shape
    pts = np.round(polygon[:, :2] * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [pts], int(label), lineType=cv2.LINE_8, shift=shift)


def face_label_mask(points: np.ndarray, contours: FaceContours, size: int,
                    person: np.ndarray | None = None) -> np.ndarray:
    """(size,size) uint8 labels from one frame's (478,2) mesh points in mask pixel coords.

    Later parts overwrite earlier ones: person -> skin (face oval) -> nose -> brows/eyes -> lips
    -> inner mouth.
    """
    mask = np.zeros((size, size), np.uint8)
    if person is not None:
        mask[person] = LABELS["hair_other"]
    _fill(mask, points[contours.face_oval], LABELS["skin"])
    _fill(mask, cv2.convexHull(points[contours.nose].astype(np.float32))[:, 0], LABELS["nose"])
    for label, lines in contours.brows.items():
        _fill(mask, _brow_polygon(points, lines), LABELS[label])
    for label, loop in contours.eyes.items():
        _fill(mask, points[loop], LABELS[label])
    _fill(mask, points[contours.outer_lips], LABELS["lower_lip"])
    _fill(mask, points[contours.upper_lip], LABELS["upper_lip"])
    _fill(mask, points[contours.inner_mouth], LABELS["inner_mouth"])
    return mask


# -- crop-space helpers shared by the feature operators --------------------------------------------

def landmarks_in_crop(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """((T,478,2) landmark xy in crop pixels, (T,) valid) from `_landmarks` and `_align`."""
    lm = unpack_arrays(row["_landmarks"])
    affine = unpack_arrays(row["_align"])["affine"].astype(np.float64)
    xy = lm["landmarks"][..., :2].astype(np.float64)
    if len(affine) != len(xy):
        raise OperatorError(f"_align has {len(affine)} frames but _landmarks has {len(xy)}")
    crop = np.einsum("tij,tnj->tni", affine[:, :, :2], xy) + affine[:, None, :, 2]
    valid = lm["valid"].astype(bool) & np.isfinite(crop).all(axis=(1, 2))
    return crop, valid


def video_frame_count(row: dict[str, Any]) -> int:
    """Frames of the track: the `_track` arrays when present, else the window length at fps."""
    if row.get("_track") is not None:
        return len(unpack_arrays(row["_track"])["frame_index"])
    return round((float(row["end"]) - float(row["start"])) * float(row["fps"]))


def track_time_window(row: dict[str, Any]) -> tuple[float, float]:
    """Source-video seconds the track's frames cover: `_track.frame_index` counts frames from the
    clip's `start`, and a track may begin after it or end before `end`."""
    start = float(row.get("start") or 0.0)
    if row.get("_track") is None:
        return start, float(row["end"])
    fps = float(row["fps"])
    frame_index = unpack_arrays(row["_track"])["frame_index"]
    return start + int(frame_index[0]) / fps, start + (int(frame_index[-1]) + 1) / fps


def fit_length(frames: np.ndarray, n: int, what: str) -> np.ndarray:
    """`frames` cut or edge-padded to `n` items; a gap above the tolerance is an error."""
    if abs(len(frames) - n) > FRAME_COUNT_TOLERANCE or len(frames) == 0:
        raise OperatorError(f"{what} has {len(frames)} frames but the track has {n}")
    if len(frames) >= n:
        return frames[:n]
    return np.concatenate([frames, np.repeat(frames[-1:], n - len(frames), axis=0)])


def read_crop(row: dict[str, Any], size: int | None, n_frames: int,
              storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """(n_frames, size, size, 3) uint8 RGB frames of the row's aligned crop video (decoded once per
    worker for all the operators that read it, see clipframes)."""
    frames = cached_frames(row["crop_uri"], size=(size, size) if size else None, storage_options=storage_options)
    return fit_length(frames, n_frames, f"crop video {row['crop_uri']}")


def mouth_open_ratio(landmarks: np.ndarray) -> np.ndarray:
    """(T,) inner-lip gap / inner mouth width from (T,478,>=2) landmarks; NaN where missing.

    A ratio of two mesh distances, so it does not depend on face size or pixel space.
    """
    xy = np.asarray(landmarks, np.float64)[..., :2]
    gap = np.linalg.norm(xy[:, UPPER_INNER_LIP] - xy[:, LOWER_INNER_LIP], axis=-1)
    width = np.linalg.norm(xy[:, MOUTH_CORNERS_INNER[0]] - xy[:, MOUTH_CORNERS_INNER[1]], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(width > 0, gap / width, np.nan)


# -- the operator ------------------------------------------------------------------------------

class FaceParsing(Operator):
    """Label masks (see LABEL_NAMES) of every track frame, at `mask_size` in crop space.

    Artifact masks_uri (.npz): labels (T,S,S) uint8, label_names (L,) str, valid (T,) bool.
    Frames without landmarks get an all-background mask and valid=False.
    """

    name = "face_parsing"
    version = "1"
    inputs = ("crop_uri", "crop_size", "_landmarks", "_align")
    outputs = ("masks_uri", "mouth_open_ratio_mean")
    stateful = True
    default_resources = Resources(num_cpus=1.0)

    @dataclass
    class Config:
        mask_size: int = 256
        person_threshold: float = 0.5  # selfie-segmentation probability that counts as person
        selfie_model: int = 0  # 0: general 256x256 model, 1: landscape model

    def setup(self) -> None:
        import mediapipe as mp

        self._contours = FaceContours.from_mediapipe()
        self._segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(
            model_selection=self.config.selfie_model)

    def person_masks(self, frames: np.ndarray) -> np.ndarray:
        probs = [self._segmenter.process(frame).segmentation_mask for frame in frames]
        return np.stack(probs) > self.config.person_threshold

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        size = self.config.mask_size
        points, valid = landmarks_in_crop(row)
        points *= size / float(row["crop_size"])
        frames = read_crop(row, size, len(points), self.ctx.storage_options)
        person = self.person_masks(frames)
        labels = np.zeros((len(points), size, size), np.uint8)
        for t in np.flatnonzero(valid):
            labels[t] = face_label_mask(points[t], self._contours, size, person[t])
        uri = self.ctx.artifact_uri("masks", row["id"], ".npz")
        save_npz(uri, self.ctx.storage_options, labels=labels, label_names=np.array(LABEL_NAMES), valid=valid)
        ratios = mouth_open_ratio(points[valid])
        return {"masks_uri": uri, "mouth_open_ratio_mean": float(np.nanmean(ratios)) if valid.any() else None}


__all__ = [
    "LABELS",
    "LABEL_NAMES",
    "FaceContours",
    "FaceParsing",
    "face_label_mask",
    "landmarks_in_crop",
    "mouth_open_ratio",
    "read_crop",
    "track_time_window",
    "video_frame_count",
]

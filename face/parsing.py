"""Face parsing: per-frame label masks of a track in its aligned crop space.

Face parts are polygons of the MediaPipe face-mesh contours (`face_mesh_connections.FACEMESH_*`),
moved into the crop with the track's frame->crop affine; the rest of the person (hair, neck,
shoulders) comes from MediaPipe selfie segmentation run on the crop itself.

A label id is its position in LABEL_NAMES (stored with the masks as `label_names`). "left" and
"right" follow MediaPipe: the subject's own left, the image's right side in a frontal view.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import cv2
import numpy as np

LABEL_NAMES = ("background", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "nose",
               "upper_lip", "lower_lip", "inner_mouth", "hair_other")
LABELS = {name: i for i, name in enumerate(LABEL_NAMES)}

# Mesh indices used for mouth geometry: inner-lip centre (upper, lower) and inner-lip corners.
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
MOUTH_CORNERS_INNER = (78, 308)
MOUTH_CORNERS_OUTER = (61, 291)
UPPER_OUTER_LIP = 0



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



def mouth_open_ratio(landmarks: np.ndarray) -> np.ndarray:
    """(T,) inner-lip gap / inner mouth width from (T,478,>=2) landmarks; NaN where missing.

    A ratio of two mesh distances, so it does not depend on face size or pixel space.
    """
    xy = np.asarray(landmarks, np.float64)[..., :2]
    gap = np.linalg.norm(xy[:, UPPER_INNER_LIP] - xy[:, LOWER_INNER_LIP], axis=-1)
    width = np.linalg.norm(xy[:, MOUTH_CORNERS_INNER[0]] - xy[:, MOUTH_CORNERS_INNER[1]], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(width > 0, gap / width, np.nan)

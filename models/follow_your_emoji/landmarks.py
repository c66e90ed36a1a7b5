"""Expression-aware landmark images (Follow-Your-Emoji's motion condition) from facefab's 478-point
MediaPipe mesh, drawn as the official media_pipe/draw_util.py FaceMeshVisualizer(forehead_edge=False,
iris_edge=False, iris_point=True) draws them (dataset/val_dataset.py): on black, 1 px lines (at 512 px;
scaled with the size) of

- the custom face oval (FACEMESH_CUSTOM_FACE_OVAL) in black, i.e. invisible, as the official head_draw;
- the eyes and eyebrows (MediaPipe's FACEMESH_LEFT/RIGHT_EYE/EYEBROW) in their own colours;
- the inner lips only, in four coloured quarters (FACEMESH_LIPS_INNER_TOP/BOTTOM_LEFT/RIGHT);
- the pupils (mesh points 473, 468: the iris centres) as red squares of half-width 3: the paper's
  emphasis on the gaze and the mouth, what the expression is read from.

Colours are RGB as the official array is (it goes to the guider through ToTensor as RGB).

- `retarget(reference, driving, relative)`: the landmarks the portrait is moved to (see its docstring).
"""

from __future__ import annotations

import cv2
import numpy as np

from facefab.face.alignment import umeyama_similarity
from facefab.face.smoothing import fill_missing

_OVAL = [(176, 149), (150, 136), (356, 454), (58, 132), (152, 148), (361, 288), (251, 389), (132, 93), (389, 356),
         (400, 377), (136, 172), (377, 152), (323, 361), (172, 58), (454, 323), (365, 379), (379, 378), (148, 176),
         (93, 234), (397, 365), (149, 150), (288, 397), (234, 127), (378, 400), (127, 162), (162, 21)]
LIPS_INNER_BOTTOM_LEFT = [(78, 95), (95, 88), (88, 178), (178, 87), (87, 14)]
LIPS_INNER_BOTTOM_RIGHT = [(14, 317), (317, 402), (402, 318), (318, 324), (324, 308)]
LIPS_INNER_TOP_LEFT = [(78, 191), (191, 80), (80, 81), (81, 82), (82, 13)]
LIPS_INNER_TOP_RIGHT = [(13, 312), (312, 311), (311, 310), (310, 415), (415, 308)]
PUPILS = (473, 468)  # the official draw_iris_points([keypoints[473], keypoints[468]])
PUPIL_COLOUR = (255, 0, 0)
HEAD_OVAL = [21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288,
             361, 323, 454, 356, 389]  # the official draw_mask's head polygon


def _connections(forehead_edge: bool = False) -> list[tuple[tuple[int, int], tuple[int, int, int]]]:
    """(edge, RGB colour) in the official drawing order (a dict: a later part's colour wins on a shared edge)."""
    from mediapipe.python.solutions import face_mesh_connections as mp

    spec: dict[tuple[int, int], tuple[int, int, int]] = {}
    for edge in (sorted(mp.FACEMESH_FACE_OVAL) if forehead_edge else _OVAL):
        spec[edge] = (0, 0, 0)
    for edges, colour in ((mp.FACEMESH_LEFT_EYE, (180, 200, 10)), (mp.FACEMESH_LEFT_EYEBROW, (180, 220, 10)),
                          (mp.FACEMESH_RIGHT_EYE, (10, 200, 180)), (mp.FACEMESH_RIGHT_EYEBROW, (10, 220, 180)),
                          (LIPS_INNER_BOTTOM_LEFT, (100, 100, 30)), (LIPS_INNER_BOTTOM_RIGHT, (100, 150, 50)),
                          (LIPS_INNER_TOP_LEFT, (120, 100, 200)), (LIPS_INNER_TOP_RIGHT, (150, 120, 100))):
        for edge in sorted(edges):
            spec[tuple(edge)] = colour
    return list(spec.items())


_CACHE: dict[bool, list] = {}


def connections(forehead_edge: bool = False) -> list[tuple[tuple[int, int], tuple[int, int, int]]]:
    if forehead_edge not in _CACHE:
        _CACHE[forehead_edge] = _connections(forehead_edge)
    return _CACHE[forehead_edge]


def draw_landmarks(size: int, points: np.ndarray, iris_point: bool = True, forehead_edge: bool = False) -> np.ndarray:
    """(size, size, 3) uint8 RGB landmark image of one (478, 2+) mesh in pixels (see the module docstring).
    Edges with an end outside the image are skipped, as MediaPipe's drawing skips them."""
    canvas = np.zeros((size, size, 3), np.uint8)
    points = np.asarray(points, np.float64)[:, :2]
    thickness = max(1, round(size / 512))
    inside = np.all((points >= 0) & (points < size), axis=1) & np.all(np.isfinite(points), axis=1)
    pixels = np.where(np.isfinite(points), points, 0).astype(int)
    for (a, b), colour in connections(forehead_edge):
        if inside[a] and inside[b]:
            cv2.line(canvas, tuple(map(int, pixels[a])), tuple(map(int, pixels[b])), colour, thickness)
    if iris_point:
        half = max(1, round(3 * size / 512))
        for index in PUPILS:
            if inside[index]:
                x, y = pixels[index]
                canvas[max(0, y - half):y + half, max(0, x - half):x + half] = PUPIL_COLOUR
    return canvas


def landmark_images(points: np.ndarray, size: int, iris_point: bool = True, forehead_edge: bool = False,
                    ) -> np.ndarray:
    """(..., 478, 2) meshes -> (..., 3, size, size) float32 images in [0, 1] (the guider's input)."""
    points = np.asarray(points)
    flat = points.reshape(-1, *points.shape[-2:])
    images = np.stack([draw_landmarks(size, p, iris_point, forehead_edge) for p in flat]).astype(np.float32) / 255.0
    return images.transpose(0, 3, 1, 2).reshape(*points.shape[:-2], 3, size, size)


def expression_masks(points: np.ndarray, size: int) -> np.ndarray:
    """(T, 478, 2) meshes -> (T, 2, size, size) uint8 0/1: the face (the official draw_mask's head polygon)
    and the expression regions (the eyes with brows and the mouth, their hulls dilated): the masks of
    the paper's facial fine-grained loss."""
    from mediapipe.python.solutions import face_mesh_connections as mp

    parts = [mp.FACEMESH_LEFT_EYE | mp.FACEMESH_LEFT_EYEBROW, mp.FACEMESH_RIGHT_EYE | mp.FACEMESH_RIGHT_EYEBROW,
             mp.FACEMESH_LIPS]
    regions = [sorted({i for edge in part for i in edge}) for part in parts]
    kernel = np.ones((max(3, size // 32),) * 2, np.uint8)
    out = np.zeros((len(points), 2, size, size), np.uint8)
    for t, mesh in enumerate(np.asarray(points, np.float64)):
        if not np.isfinite(mesh[:, :2]).all():
            continue
        cv2.fillPoly(out[t, 0], [mesh[HEAD_OVAL, :2].round().astype(np.int32)], 1)
        for region in regions:
            cv2.fillConvexPoly(out[t, 1], cv2.convexHull(mesh[region, :2].round().astype(np.int32)), 1)
        out[t, 1] = cv2.dilate(out[t, 1], kernel)
    return out


def retarget(reference: np.ndarray, driving: np.ndarray, relative: bool = True) -> np.ndarray:
    """The (N, 478, 2) float32 landmarks the reference face is animated to, from its own (478, 2+) mesh and
    the driving (N, 478, 2+) meshes in the same crop frame (NaN rows, no face, filled by interpolation over
    time). A similarity A takes the first driving face onto the reference (least squares over the mesh).
    relative: the reference's own landmarks plus the driving motion since the first driving frame, carried
    by A (the reference keeps its face shape and pose); else the driving landmarks placed on the
    reference's face by A (the driving face's own shape and expression)."""
    reference = np.asarray(reference, np.float64)[:, :2]
    filled, _ = fill_missing(np.asarray(driving, np.float64)[..., :2])
    filled = filled.astype(np.float64)
    align = umeyama_similarity(filled[0], reference)
    placed = filled @ align[:, :2].T + align[:, 2]
    if relative:
        placed = reference[None] + (placed - placed[:1])
    return placed.astype(np.float32)


__all__ = ["HEAD_OVAL", "PUPILS", "connections", "draw_landmarks", "expression_masks", "landmark_images", "retarget"]

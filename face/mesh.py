"""The 478-point MediaPipe face mesh (468 mesh + 10 iris points): index tables and per-frame meshing.

Each frame is cropped to a square around the track's box (so in a multi-face clip the mesh lands
on this track's face), the mesh runs on the crop (`mediapipe.solutions.face_mesh`,
`refine_landmarks=True`; static image mode for one image, video mode along a track), and the points
are mapped back to source pixels. A frame counts as found only when the mesh centre lies inside the
track box. z is in source pixels too (MediaPipe's relative depth scaled like x, smaller = nearer the
camera).

`MEDIAPIPE_TO_68` selects 68 of the mesh points in iBUG-300W order (the dlib/FAN convention):
jaw 0-16 (from the subject's right ear, i.e. image left, over the chin to the left ear), brows
17-26, nose bridge 27-30 and nostril base 31-35, eyes 36-47 (outer corner, upper lid x2, inner
corner, lower lid x2), outer lips 48-59 and inner lips 60-67 (from the subject's right corner).
Source: picked on MediaPipe's canonical face model (mediapipe/modules/face_geometry/data/
canonical_face_model.obj) along the contours of `mediapipe.solutions.face_mesh_connections`
(FACE_OVAL, *_EYEBROW, *_EYE, LIPS): jaw points resampled at equal arc length from ear level
(127/356) to the chin (152); eyes/lids/lip points at the iBUG positions along each contour; one
mesh vertex per point. It agrees with the correspondences commonly used for MediaPipe->dlib
conversion (e.g. github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks, which averages two vertices at
a few jaw/nose points) and is exactly left/right mirror-symmetric on the canonical model.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

NUM_LANDMARKS = 478

# fmt: off
MEDIAPIPE_TO_68 = np.array([
    # jaw 0-16: image left (subject's right) -> chin (8) -> image right
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    # brows 17-26: subject's right brow outer->inner, then left brow inner->outer
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose 27-35: bridge top->tip, then nostril base image left->right (33 = subnasale)
    168, 197, 5, 4, 98, 97, 2, 326, 327,
    # eyes 36-47: right eye outer, upper x2, inner, lower x2; left eye inner, upper x2, outer, lower x2
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lips 48-59: right corner, upper lip -> left corner, lower lip back
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    # inner lips 60-67: right corner, upper -> left corner, lower back
    78, 81, 13, 311, 308, 402, 14, 178,
], dtype=np.int64)
# fmt: on

# Positions of selected mesh vertices on MediaPipe's canonical face model
# (mediapipe/modules/face_geometry/data/canonical_face_model.obj, Apache-2.0; the wheel does not
# ship it). Units ~cm; +x toward the image right of a frontal face, +y up, +z toward the camera.
# Rigid points (forehead, nose, eye corners, cheekbones, temples) serve head pose and alignment;
# the eye contours and mouth corners place the FFHQ framing of the alignment template.
CANONICAL_VERTICES: dict[int, tuple[float, float, float]] = {
    10: (0.000000, 8.261778, 4.481535),  # forehead top
    151: (0.000000, 6.545390, 5.027311),
    9: (0.000000, 4.885979, 5.385258),
    168: (0.000000, 3.271027, 5.236015),  # between the eyes
    6: (0.000000, 2.473255, 5.788627),
    197: (0.000000, 1.728369, 6.316750),
    195: (0.000000, 1.059413, 6.774605),
    5: (0.000000, 0.365669, 7.242870),
    4: (0.000000, -0.463170, 7.586580),  # nose tip
    1: (0.000000, -1.126865, 7.475604),
    2: (0.000000, -2.089024, 6.058267),  # below the nose
    98: (-1.405627, -1.714196, 5.241087),  # nostrils
    327: (1.405627, -1.714196, 5.241087),
    33: (-4.445859, 2.663991, 3.173422),  # eye corners: image-left eye outer, inner; right eye inner, outer
    133: (-1.856432, 2.585245, 3.757904),
    362: (1.856432, 2.585245, 3.757904),
    263: (4.445859, 2.663991, 3.173422),
    116: (-6.465170, 0.937119, 1.689873),  # cheekbones
    345: (6.465170, 0.937119, 1.689873),
    127: (-7.743095, 2.364999, -2.005167),  # temples
    356: (7.743095, 2.364999, -2.005167),
    234: (-7.664182, 0.673132, -2.435867),
    454: (7.664182, 0.673132, -2.435867),
    160: (-3.670075, 2.927714, 3.724325),  # eyelids (iBUG 37, 38, 40, 41, 43, 44, 46, 47)
    158: (-2.724032, 2.961810, 3.871767),
    153: (-2.724032, 2.315802, 3.777151),
    144: (-3.670075, 2.360153, 3.635230),
    385: (2.724032, 2.961810, 3.871767),
    387: (3.670075, 2.927714, 3.724325),
    373: (3.670075, 2.360153, 3.635230),
    380: (2.724032, 2.315802, 3.777151),
    61: (-2.456206, -4.342621, 4.283884),  # mouth corners
    291: (2.456206, -4.342621, 4.283884),
}


def canonical_points(indices) -> np.ndarray:
    """(N, 3) canonical positions of the given mesh indices."""
    return np.array([CANONICAL_VERTICES[int(i)] for i in indices], np.float64)


# Useful groups in iBUG-68 indices.
IBUG_RIGHT_EYE = np.arange(36, 42)  # the subject's right eye: image left in a frontal view
IBUG_LEFT_EYE = np.arange(42, 48)
IBUG_OUTER_MOUTH = np.arange(48, 60)


def to_68(landmarks478: np.ndarray) -> np.ndarray:
    """(..., 478, D) MediaPipe mesh points -> (..., 68, D) iBUG-68 points."""
    landmarks478 = np.asarray(landmarks478)
    if landmarks478.shape[-2] < 468:
        raise ValueError(f"expected (..., 478, D) landmarks, got shape {landmarks478.shape}")
    return landmarks478[..., MEDIAPIPE_TO_68, :]


# -- per-frame mesh --------------------------------------------------------------------------

def square_around_box(bbox: np.ndarray, scale: float) -> tuple[float, float, float]:
    """Centre x, centre y and side of a square `scale` times the longer side of `bbox`."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * scale


def crop_affine(center_x: float, center_y: float, side: float, crop_px: int) -> np.ndarray:
    """(2,3) affine source -> crop pixels for an axis-aligned square."""
    s = crop_px / side
    return np.array([[s, 0, crop_px / 2 - s * center_x], [0, s, crop_px / 2 - s * center_y]], np.float64)


class FaceMesher:
    """MediaPipe face mesh on a square crop around a given box; points in source pixels.

    Called on one image, the mesh graph runs in static mode (its own face detector, then the mesh).
    `track` meshes a track's frames in video mode, the way MediaPipe's own video pipeline works:
    after the first frame the mesh's region of interest comes from its previous landmarks, and its
    detector runs again only when the mesh loses the face (7.3 instead of 10.3 ms per frame here).
    `track_roi=False` meshes every frame of a track in static mode instead."""

    def __init__(self, min_confidence: float = 0.5, crop_scale: float = 1.8, crop_px: int = 256,
                 track_roi: bool = True):
        self.crop_scale = crop_scale
        self.crop_px = crop_px
        self.track_roi = track_roi
        self.min_confidence = min_confidence
        self._graphs: dict[bool, object] = {}  # static mode? -> graph, each made when first used

    def _graph(self, static: bool):
        if static not in self._graphs:
            import mediapipe as mp

            self._graphs[static] = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=static, max_num_faces=1, refine_landmarks=True,
                min_detection_confidence=self.min_confidence, min_tracking_confidence=self.min_confidence)
        return self._graphs[static]

    def __call__(self, frame: np.ndarray, bbox: np.ndarray) -> np.ndarray | None:
        """(478, 3) float32 points of the face in `bbox`, or None when not found."""
        return self._points(self._graph(static=True), frame, bbox)

    def track(self, frames: Iterable[np.ndarray], bboxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (T,478,3) (NaN where not found) and valid (T,) of consecutive frames of one
        track (an array or any iterable, read once) with per-frame boxes (T,4); frames whose box
        is not finite are skipped."""
        landmarks = np.full((len(bboxes), NUM_LANDMARKS, 3), np.nan, np.float32)
        valid = np.zeros(len(bboxes), bool)
        graph = self._graph(static=not self.track_roi)
        if self.track_roi:
            graph.reset()  # no region of interest carried over from another track
        for i, (frame, bbox) in enumerate(zip(frames, bboxes)):
            if not np.isfinite(bbox).all():  # no box for this frame: nothing to mesh, detect afresh after
                if self.track_roi:
                    graph.reset()
                continue
            points = self._points(graph, frame, bbox)
            if points is not None:
                landmarks[i], valid[i] = points, True
            elif self.track_roi:
                graph.reset()  # lost, or on a neighbouring face: detect again on the next frame
        return landmarks, valid

    def _points(self, graph, frame: np.ndarray, bbox: np.ndarray) -> np.ndarray | None:
        cx, cy, side = square_around_box(bbox, self.crop_scale)
        affine = crop_affine(cx, cy, side, self.crop_px)
        crop = cv2.warpAffine(frame, affine, (self.crop_px, self.crop_px), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        result = graph.process(crop)
        if not result.multi_face_landmarks:
            return None
        points = np.array([(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark], np.float64)
        if len(points) != NUM_LANDMARKS:
            raise ValueError(f"face mesh returned {len(points)} points, expected {NUM_LANDMARKS} "
                                "(refine_landmarks must be on)")
        # normalised crop coords -> source pixels; z is scaled like x by MediaPipe
        points *= side
        points[:, 0] += cx - side / 2
        points[:, 1] += cy - side / 2
        if not _centre_inside(points, bbox):
            return None  # the mesh found a neighbouring face
        return points.astype(np.float32)

    def close(self) -> None:
        for graph in self._graphs.values():
            graph.close()
        self._graphs.clear()


def _centre_inside(points: np.ndarray, bbox: np.ndarray) -> bool:
    x, y = points[:, :2].mean(axis=0)
    return bool(bbox[0] <= x <= bbox[2] and bbox[1] <= y <= bbox[3])


def mesh_track(frames: Iterable[np.ndarray], bboxes: np.ndarray, mesher: FaceMesher) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (T,478,3) (NaN where not found) and valid (T,) for the consecutive frames of one
    track (an array or any iterable, read once) with per-frame boxes (T,4); see FaceMesher.track."""
    return mesher.track(frames, bboxes)


def largest_face_landmarks(frames: np.ndarray) -> np.ndarray:
    """(T, 478, 3) frame-pixel landmarks of the longest-tracked face of a short clip held in memory,
    NaN on frames where it has none (analysis and evaluation of single-speaker footage)."""
    from .detection import FaceDetector, detect_faces, track_faces

    landmarks = np.full((len(frames), NUM_LANDMARKS, 3), np.nan, np.float32)
    # static mode: a measurement tool meshes each frame on its own, with no state carried between
    detector, mesher = FaceDetector(), FaceMesher(track_roi=False)
    try:
        tracks = track_faces(detect_faces(frames, detector), min_track_frames=1)
        if tracks:
            track = max(tracks, key=len)
            marks, _ = mesh_track(frames[track.frame_index], track.bbox, mesher)
            landmarks[track.frame_index] = marks
    finally:
        detector.close()
        mesher.close()
    return landmarks

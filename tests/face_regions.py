"""The regions the face-editing tests compare pixels on (makeup, swap, BeautyREC, Face-Adapter)."""

from __future__ import annotations

import cv2
import numpy as np

from facefab.face.colour import inter_ocular
from facefab.face.parsing import FaceContours


def face_and_away(points: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(face, away), boolean masks of an image of `shape`: inside the face mesh's outline, and more than
    one inter-ocular distance from it (hair, background, clothes: what an edit of the face must leave)."""
    face = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(face, [np.round(points[FaceContours.from_mediapipe().face_oval, :2]).astype(np.int32)], 1)
    away = cv2.distanceTransform(1 - face, cv2.DIST_L2, 5) > inter_ocular(points)
    return face.astype(bool), away

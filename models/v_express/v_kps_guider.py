"""V-Kps: the three face keypoints (both eyes, the nose tip) drawn as an image, and the guider that turns
that image into features added to the denoiser's first feature map.

- `v_kps_points(mesh)`: the official keypoints (insightface's kps[:3]: the image-left eye, the
  image-right eye, the nose tip) from a 478-point MediaPipe mesh: eye centres (mean of the six iBUG eye
  points) and the nose tip (iBUG 30).
- `posed_v_kps(mesh, size, pose)`: those keypoints for each frame of a head-pose track given as yaw /
  pitch / roll offsets from the reference's own pose (as facefab.operators.pose_source reads a driving
  series: relative to its first frame; the official "offset_retarget"): the canonical face
  (face.mesh.CANONICAL_VERTICES) posed like the reference (face.pose.head_pose), turned by each frame's
  offsets and projected, plus the reference's own offset from that projection.
- `draw_v_kps(size, kps)`: the official V-kps image (datasets/utils.py draw_v_kps_image): eye-nose
  sticks in 60 % red / green, then dots of radius 4 in red, green, blue, on black; RGB uint8.
- `VKpsGuider`: the official module (modules/v_kps_guider.py, same parameter names and shapes), the
  AnimateAnyone guider shared with Follow-Your-Emoji (facefab.models.shared.guider.Guider).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from facefab.face.mesh import IBUG_LEFT_EYE, IBUG_RIGHT_EYE, MEDIAPIPE_TO_68, canonical_points, to_68
from facefab.face.pose import camera_matrix, euler_rotation, head_pose

from ..shared.guider import Guider

NOSE_TIP_68 = 30
KPS_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # image-left eye, image-right eye, nose
_STICKS = ((0, 2), (1, 2))
_STICK_HALF_WIDTH = 4
_DOT_RADIUS = 4


def v_kps_points(mesh: np.ndarray) -> np.ndarray:
    """(..., 478, 2+) mesh points -> (..., 3, 2) float32: image-left eye, image-right eye, nose tip."""
    points = to_68(np.asarray(mesh, np.float64)[..., :2])
    return np.stack([points[..., IBUG_RIGHT_EYE, :].mean(-2), points[..., IBUG_LEFT_EYE, :].mean(-2),
                     points[..., NOSE_TIP_68, :]], axis=-2).astype(np.float32)


def _canonical_v_kps() -> np.ndarray:
    """(3, 3) the V-kps of MediaPipe's canonical face in OpenCV camera axes (x right, y down, z away)."""
    eyes = MEDIAPIPE_TO_68[IBUG_RIGHT_EYE], MEDIAPIPE_TO_68[IBUG_LEFT_EYE]
    points = [canonical_points(eye).mean(0) for eye in eyes] + [canonical_points([MEDIAPIPE_TO_68[NOSE_TIP_68]])[0]]
    return np.stack(points) * [1.0, -1.0, -1.0]


def posed_v_kps(mesh: np.ndarray, size: int, pose: np.ndarray | None, num_frames: int | None = None) -> np.ndarray:
    """(T, 3, 2) float32 V-kps of the reference `mesh` (478, 2+) in a `size` px crop: held still when
    `pose` is None (T = num_frames), else turned by each row's yaw, pitch, roll offsets (degrees, the
    conventions of face.pose) from the reference's own pose."""
    own = v_kps_points(mesh)
    if pose is None:
        if num_frames is None:
            raise ValueError("give pose or num_frames")
        return np.repeat(own[None], num_frames, axis=0)
    pose = np.asarray(pose, np.float64).reshape(-1, 3)
    reference = head_pose(np.asarray(mesh)[:, :2], size, size)
    camera, model = camera_matrix(size, size), _canonical_v_kps()
    tvec = reference[3:6].reshape(3, 1)

    def project(angles) -> np.ndarray:
        rvec, _ = cv2.Rodrigues(euler_rotation(*angles))
        return cv2.projectPoints(model, rvec, tvec, camera, None)[0].reshape(3, 2)

    offset = own - project(reference[:3])
    return np.stack([project(reference[:3] + angles) + offset for angles in pose]).astype(np.float32)


def draw_v_kps(size: int, kps: np.ndarray) -> np.ndarray:
    """(size, size, 3) uint8 RGB V-kps image of (3, 2) keypoints in pixels (official drawing)."""
    canvas = np.zeros((size, size, 3), np.uint8)
    kps = np.asarray(kps, np.float64)
    for a, b in _STICKS:
        (xa, ya), (xb, yb) = kps[a], kps[b]
        length = math.hypot(xa - xb, ya - yb)
        angle = int(math.degrees(math.atan2(ya - yb, xa - xb)))
        centre = (int((xa + xb) / 2), int((ya + yb) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), _STICK_HALF_WIDTH), angle, 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in KPS_COLOURS[a]])
    for (x, y), colour in zip(kps, KPS_COLOURS):
        cv2.circle(canvas, (int(x), int(y)), _DOT_RADIUS, colour, -1)
    return canvas


def kps_images(kps: np.ndarray, size: int) -> np.ndarray:
    """(..., 3, 2) keypoints -> (..., 3, size, size) float32 V-kps images in [0, 1] (the guider's input)."""
    kps = np.asarray(kps)
    flat = kps.reshape(-1, 3, 2)
    images = np.stack([draw_v_kps(size, k) for k in flat]).astype(np.float32) / 255.0
    return images.transpose(0, 3, 1, 2).reshape(*kps.shape[:-2], 3, size, size)


class VKpsGuider(Guider):
    """V-kps image -> features at the latent resolution with the UNet's first width (zero at init): the
    shared official guider (facefab.models.shared.guider) under V-Express' name."""


__all__ = ["VKpsGuider", "draw_v_kps", "kps_images", "posed_v_kps", "v_kps_points"]

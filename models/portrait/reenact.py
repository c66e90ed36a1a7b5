"""Weight-free reenactment: one still portrait moved like a driving video, from face meshes alone.

What `animate --driving VIDEO` runs with no checkpoint. Nothing is learned and nothing downloaded:

1. Motion: per driving frame, a 3D similarity fitted on the mesh's rigid points (brow, nose bridge,
   eye corners, temples) separates the head's pose from the expression, which is what is left of the
   mesh once the pose is undone. Relative transfer (the default): the pose change since the driving
   video's first frame moves the portrait's head, and the expression change since then, rescaled to
   the portrait's face, is added to the portrait's own mesh, so the portrait keeps its face shape.
   Absolute: the driving mesh itself, placed on the portrait's face by its first frame's fit.
2. Rendering: a mesh warp of the portrait (displacement linear over the Delaunay triangles of the
   target mesh plus a ring around the head that moves with the head and a farther ring that is held,
   so hair follows and the background stays), Gaussian-smoothed so no triangle edge shows.
3. Mouth: when the driving mouth opens past the portrait's, the cavity and teeth are painted
   (`lipsync.mouth_shape.paint_cavity`, the dub's renderer). Eyes: the eyelids are moved as a whole
   with the eye, and the driving video's blinks (lid distance against the video's open-eye level)
   close the portrait's lids with the talking photo's `close_eyes`.
4. Time: the driving meshes are filled over frames without a face and smoothed with a centred
   moving average before anything else, so MediaPipe's frame-to-frame noise does not shimmer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from facefab.face.alignment import umeyama_similarity
from facefab.face.smoothing import fill_missing, moving_average

from ..lipsync.mouth_shape import MouthShapeConfig, lip_gap, mesh_warp, paint_cavity, smoothstep
from .weightfree import EYES, close_eyes, eye_lids

# points that move with the skull, not with the expression: brow ridge, nose bridge, eye corners,
# temples, cheekbones
RIGID_POINTS = np.array([9, 151, 10, 168, 6, 197, 195, 5, 4, 33, 133, 362, 263, 127, 356, 234, 454, 116, 345,
                         98, 327], np.int64)
IRISES = np.arange(468, 478)


@dataclass
class LitMouthConfig(MouthShapeConfig):
    """The painted inner mouth of a face lit from the front, as in talking videos: tongue and palate in
    the lips' hue, lighter than the talking photo's dark hole (which measures darker than the shipped
    talking clips' real mouths), yet dark enough that a face mesh still reads the mouth as open (a much
    lighter inside lost that on a painted portrait)."""

    cavity_color: tuple[float, float, float] = (0.3, 0.18, 0.2)
    cavity_edge_color: tuple[float, float, float] = (0.5, 0.3, 0.32)


@dataclass
class ReenactConfig:
    relative: bool = field(default=True, metadata={
        "help": "apply the driving motion relative to its first frame (keep the portrait's face shape)"})
    expression: float = field(default=1.0, metadata={"help": "scale of the transferred expression"})
    smooth_frames: int = field(default=3, metadata={"help": "moving average over the driving meshes (frames)"})
    head_ring: float = 1.2  # the ring moved with the head: the face oval scaled this much about its centre
    hold_ring: float = 2.0  # ... and the ring held still (background)
    neck_ring: tuple[float, float] = (1.08, 1.5)  # the two rings under the jaw: the neck and body stay
    warp_smooth: float = 0.012  # Gaussian smoothing of the warp, fraction of the face width
    blink_from: float = 0.2  # eyes closed by less than this fraction of their open height are not a blink
    max_degrees: float = 35.0  # head rotations beyond this (relative) are clipped: a warp cannot turn further
    shape: LitMouthConfig = field(default_factory=lambda: LitMouthConfig())


@dataclass
class ReenactPlan:
    targets: np.ndarray  # (N, 478, 2) where the portrait's mesh points go, image pixels
    heads: np.ndarray  # (N, K, 2) where the head ring goes
    blink: np.ndarray  # (N, 2) per eye 0 open .. 1 closed
    sources: np.ndarray  # (478, 2) the portrait's mesh
    ring: np.ndarray  # (K, 2) the head ring on the portrait
    hold: np.ndarray  # (K, 2) the held ring on the portrait


@lru_cache(maxsize=1)
def eye_points() -> tuple[np.ndarray, np.ndarray]:
    """Mesh indices of each eye's loop plus its iris (image-left eye first, as EYES)."""
    loops = [np.unique(np.concatenate(lids)) for lids in eye_lids()]
    irises = (IRISES[:5], IRISES[5:])  # MediaPipe: 468-472 the subject's right (image-left) iris
    return tuple(np.concatenate([loop, iris]) for loop, iris in zip(loops, irises, strict=True))


@lru_cache(maxsize=1)
def face_oval() -> np.ndarray:
    from facefab.face.parsing import FaceContours

    return np.array(FaceContours.from_mediapipe().face_oval)


def apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(D, D+1) affine applied to (..., D) points."""
    return points @ transform[:, :-1].T + transform[:, -1]


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The affine a after b, both (D, D+1)."""
    return np.hstack([a[:, :-1] @ b[:, :-1], (a[:, :-1] @ b[:, -1] + a[:, -1])[:, None]])


def invert(transform: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(transform[:, :-1])
    return np.hstack([linear, (-linear @ transform[:, -1])[:, None]])


def clip_rotation(transform: np.ndarray, max_degrees: float) -> np.ndarray:
    """A 3D similarity whose rotation angle is clipped to `max_degrees` (same axis, scale, and the
    centroid's path unchanged only approximately: the translation is kept)."""
    scale = np.cbrt(abs(np.linalg.det(transform[:, :3])))
    rotation = transform[:, :3] / scale
    angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0)))
    if angle <= max_degrees:
        return transform
    from scipy.spatial.transform import Rotation

    vector = Rotation.from_matrix(rotation).as_rotvec() * (max_degrees / angle)
    return np.hstack([scale * Rotation.from_rotvec(vector).as_matrix(), transform[:, 3:]])


def eye_openness(points: np.ndarray) -> np.ndarray:
    """(N, 2) lid distance over eye width per eye for (N, 478, >=2) meshes."""
    out = []
    for outer, inner, top, bottom in EYES:
        width = np.linalg.norm(points[:, outer, :2] - points[:, inner, :2], axis=-1)
        out.append(np.linalg.norm(points[:, top, :2] - points[:, bottom, :2], axis=-1) / np.maximum(width, 1e-6))
    return np.stack(out, axis=1)


def blink_amount(driving: np.ndarray, blink_from: float) -> np.ndarray:
    """(N, 2) per eye 0 open .. 1 shut from the driving meshes' lid distance against their open-eye level
    (the 90th percentile, so a first frame caught mid-blink does not set it): blinks, winks, lowered lids."""
    openness = eye_openness(driving)
    level = np.maximum(np.percentile(openness, 90, axis=0), 1e-6)
    closure = np.clip(1.0 - openness / level, 0.0, 1.0)
    return smoothstep((closure - blink_from) / max(1.0 - blink_from - 0.15, 1e-6))


def head_rings(points: np.ndarray, config: ReenactConfig) -> tuple[np.ndarray, np.ndarray]:
    """(K, 3) the ring that moves with the head and (K, 2) the held ring: the face oval scaled about its
    centre, wide above and beside the face (hair and ears move with it) and close under the jaw,
    where the neck joins a body that does not follow the head."""
    oval = points[face_oval()]
    centre = oval.mean(axis=0)
    offset = oval - centre
    # 0 above and beside the face .. 1 under the jaw, along the face's own down direction
    down = points[152, :2] - points[10, :2]
    down /= max(np.linalg.norm(down), 1e-6)
    below = smoothstep(((offset[:, :2] @ down) / np.maximum(np.linalg.norm(offset[:, :2], axis=1), 1e-6) - 0.3) / 0.5)
    head = config.head_ring + (config.neck_ring[0] - config.head_ring) * below
    hold = config.hold_ring + (config.neck_ring[1] - config.hold_ring) * below
    ring = centre + offset * np.stack([head, head, np.ones_like(head)], axis=1)
    return ring, centre[:2] + offset[:, :2] * hold[:, None]


class WeightFreeReenactment:
    """The weight-free reenactment. Holds settings only; `plan` then `render` per frame."""

    name = "weightfree"

    def __init__(self, config: ReenactConfig | None = None):
        self.config = config or ReenactConfig()

    def plan(self, points: np.ndarray, driving: np.ndarray) -> ReenactPlan:
        """points: (478, 3) the portrait's mesh in its pixels (z as MediaPipe gives it, scaled like x);
        driving: (N, 478, 3) the driving video's meshes in its pixels, NaN rows where it has no face."""
        c = self.config
        reference = np.asarray(points, np.float64)
        if reference.shape[-1] < 3:
            raise ValueError("the portrait's mesh needs its z column")
        driving, _ = fill_missing(np.asarray(driving, np.float64)[..., :3])
        driving = moving_average(driving.astype(np.float64), c.smooth_frames)
        first = driving[0]
        # driving first frame -> portrait: sizes and places the driving motion on the portrait's face
        onto = umeyama_similarity(first[RIGID_POINTS], reference[RIGID_POINTS])
        from_onto = invert(onto)
        ring3d, hold = head_rings(reference, c)
        oval = face_oval()
        targets, heads = [], []
        eyes = eye_points()
        for frame in driving:
            pose = umeyama_similarity(first[RIGID_POINTS], frame[RIGID_POINTS])  # first -> this frame
            moved = compose(onto, compose(clip_rotation(pose, c.max_degrees), from_onto))  # in portrait space
            if c.relative:
                expression = apply(invert(pose), frame) - first  # in the first frame's space
                expression = expression @ onto[:, :3].T  # rotated and scaled into the portrait's
                for eye in eyes:  # lids move with the eye (blinks are drawn, not warped); irises keep theirs: gaze
                    lids = eye[~np.isin(eye, IRISES)]
                    expression[lids] = expression[lids].mean(axis=0)
                target = apply(moved, reference + c.expression * expression)
            else:
                target = apply(onto, frame)
            targets.append(target[:, :2])
            # the ring keeps its offset from the oval, turned with the head: under the jaw it goes where
            # the chin goes, so an opening mouth does not fold the neck
            heads.append(target[oval, :2] + (ring3d - reference[oval]) @ moved[:2, :3].T)
        return ReenactPlan(np.stack(targets), np.stack(heads), blink_amount(driving, c.blink_from),
                           reference[:, :2], ring3d[:, :2], hold)

    def render(self, plan: ReenactPlan, t: int, image: np.ndarray) -> np.ndarray:
        """Frame t (H, W, 3) uint8: the portrait warped onto the plan's frame t."""
        c = self.config
        src, dst = plan.sources, plan.targets[t]
        width = float(np.linalg.norm(src[61] - src[291]))
        face_w = float(np.ptp(src[:, 0]))
        sources = np.concatenate([src, plan.ring, plan.hold])
        targets = np.concatenate([dst, plan.heads[t], plan.hold])
        height, wide = image.shape[:2]
        out = mesh_warp(image, sources, targets, c.warp_smooth * face_w, (0, 0, wide, height))
        if lip_gap(dst) - lip_gap(src) > 0.5 and lip_gap(src) < c.shape.closed_gap * width:
            out = paint_cavity(out, dst, c.shape)
        if plan.blink[t].max() > 0.02:
            out = close_eyes(out, dst, plan.blink[t])
        return out


__all__ = ["RIGID_POINTS", "LitMouthConfig", "ReenactConfig", "ReenactPlan", "WeightFreeReenactment", "blink_amount", "eye_openness"]

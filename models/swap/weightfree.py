"""Weight-free face swap: the source portrait's face on the faces of a video, following their pose and
expression, from face meshes alone.

1. Geometry, per face track of the video: the track's first frame is its reference; each frame's head
   pose relative to it is a 3D similarity fitted on the mesh's rigid points (brow ridge, nose bridge,
   eye corners, temples), and its expression is what is left of the mesh once that pose is undone. The
   source's mesh, placed on the reference frame's face by the same kind of fit, takes each frame's
   expression offsets and pose: the source's face shape (where its eyes, nose, mouth and brows sit)
   moving as the video's face moves. The outline stays the video's (`outline` blends toward the
   source's), so the new face fills the old one's place and no old edge shows beside it.
2. Texture: the source image warped onto that mesh, affine per triangle of MediaPipe's tesselation (the
   eye openings filled with the eye's and iris's points), triangles drawn far to near. Colour: the
   source's chroma turned and scaled so its skin's lands on the video face's (greys stay grey), its lightness
   shifted, and its low-frequency lightness
   replaced by the video face's (`relight`): the video's light falls on the new face, whose own detail
   stays; the video face's skin colour is averaged over time per track, so nothing flickers.
3. Blend: a feathered mask inside both outlines (the new mesh's and the video face's), fading in from
   the source's own outline (a turned head's silhouette shows background there) and out above the
   higher of both faces' brows (a source's forehead is often under hair), without the open mouth (the
   video's teeth and tongue show). When a fringe hides the source's brows (the band above them streaked
   like hair, not smooth like its cheeks), the new face ends at the eyes and the video's brows stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from facefab.face.alignment import umeyama_similarity
from facefab.face.colour import (
    ColourState,
    RegionColour,
    averaged_colour,
    colour_of,
    feathered,
    from_lab,
    inter_ocular,
    to_lab,
    turn_chroma,
)
from facefab.face.parsing import LABELS, FaceContours, face_label_mask
from facefab.face.smoothing import fill_missing

from ..portrait.reenact import RIGID_POINTS, apply, invert




@lru_cache(maxsize=1)
def mesh_triangles() -> np.ndarray:
    """(T, 3) the face mesh's triangles (MediaPipe's tesselation, its 3-cliques)."""
    import mediapipe as mp

    edges = mp.solutions.face_mesh_connections.FACEMESH_TESSELATION
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    return np.array(sorted({tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]}))


def eye_triangles(points: np.ndarray, contours: FaceContours) -> np.ndarray:
    """(T, 3) triangles filling the eye openings (holes of the tesselation): Delaunay triangles of each
    eye's loop and the iris points inside it on this face, those whose centre lies inside the loop."""
    from scipy.spatial import Delaunay

    out = []
    for eye in contours.eyes.values():
        loop = np.array(eye)
        outline = points[loop, :2].astype(np.float32)

        def inside(xy: np.ndarray) -> bool:
            return cv2.pointPolygonTest(outline, (float(xy[0]), float(xy[1])), False) > 0

        nodes = np.concatenate([loop, [i for i in range(468, 478) if inside(points[i, :2])]]).astype(int)
        out += [nodes[simplex] for simplex in Delaunay(points[nodes, :2]).simplices
                if inside(points[nodes[simplex], :2].mean(axis=0))]
    return np.array(out, int).reshape(-1, 3)


@dataclass
class SwapConfig:
    outline: float = field(default=0.0, metadata={
        "help": "0: the new face keeps the video face's outline .. 1: the source's outline"})
    expression: float = field(default=1.0, metadata={"help": "scale of the video face's expression on the new face"})
    feather: float = field(default=0.12, metadata={"help": "edge softness, share of the inter-ocular distance"})
    lightness: float = field(default=1.0, metadata={
        "help": "share of the video face's skin lightness the new face takes (colour correction)"})
    brow_margin: float = field(default=0.35, metadata={
        "help": "the new face fades out over this share of the inter-ocular distance above the brows"})
    edge_margin: float = field(default=0.15, metadata={
        "help": "the source's texture fades in over this share of the inter-ocular distance from its outline"})
    relight: float = field(default=0.4, metadata={
        "help": "lighting blur, share of the inter-ocular distance: the new face takes the video face's light "
                "at this scale and keeps its own detail below it (0: off)"})
    temporal: float = field(default=0.8, metadata={
        "help": "weight of the past in the moving average of the skin colours (0: per frame)"})
    fringe: float = field(default=1.2, metadata={
        "help": "the source's forehead counts as under hair when its texture (the local spread of lightness "
                "just above the brows) is this many times its cheeks'; the new face then ends at the eyes and "
                "the video's brows and forehead stay (0: never)"})

    def validate(self) -> None:
        for name in ("outline", "lightness", "temporal"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.temporal >= 1.0:
            raise ValueError("temporal must be below 1")
        if self.fringe < 0:
            raise ValueError(f"fringe must be 0 (off) or a positive ratio, got {self.fringe}")


@dataclass
class SourceFace:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    points: np.ndarray  # (478, 3) its mesh, pixels (z scaled like x)
    skin: RegionColour  # of its skin
    keep: np.ndarray  # (H, W) float32: 1 inside the face, fading to 0 at its outline
    triangles: np.ndarray  # (T, 3) the mesh's triangles with the eye openings filled on this face
    fringe: bool = False  # hair hides its brows and forehead: the new face ends at the eyes


@dataclass
class TrackPlan:
    """Where the new face's mesh points go in each frame of a track, and its colour state."""

    targets: np.ndarray  # (N, 478, 3) frame pixels (z scaled like x)
    colours: ColourState = field(default_factory=ColourState)


class WeightFreeSwap:
    """source(image, points) once; plan(source, track meshes) per track; render(...) per frame."""

    def __init__(self, config: SwapConfig | None = None, contours: FaceContours | None = None):
        self.config = config or SwapConfig()
        self.config.validate()
        self.contours = contours or FaceContours.from_mediapipe()
        self.oval = np.array(self.contours.face_oval)
        self.brows = np.array(sorted({i for lines in self.contours.brows.values() for line in lines for i in line}))
        self.eyes = np.array(sorted({i for loop in self.contours.eyes.values() for i in loop}))

    def _skin(self, points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        side = max(shape[:2])
        labels = face_label_mask(points[:, :2], self.contours, side)[: shape[0], : shape[1]]
        return np.isin(labels, (LABELS["skin"], LABELS["nose"]))

    def source(self, image: np.ndarray, points: np.ndarray) -> SourceFace:
        points = np.asarray(points, np.float64)
        if points.shape[-1] < 3:
            raise ValueError("the source's mesh needs its z column")
        lab = to_lab(image)
        iod = inter_ocular(points)
        skin_mask = self._skin(points, image.shape)
        skin = colour_of(lab, skin_mask, max(1, round(0.04 * iod)))
        if skin is None:
            raise ValueError("the source face shows too little skin to colour-match")
        # the texture fades in from the source's outline: a turned head's silhouette shows background or hair
        keep = np.ones(image.shape[:2], np.float32)
        oval = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(oval, [np.round(points[self.oval, :2] * 16).astype(np.int32)], 1, shift=4)
        inside = cv2.distanceTransform(oval, cv2.DIST_L2, 5)
        keep *= np.clip(inside / max(self.config.edge_margin * iod, 1.0), 0.0, 1.0)
        triangles = np.concatenate([mesh_triangles(), eye_triangles(points, self.contours)])
        fringe = (self.config.fringe > 0
                  and self._forehead_texture(lab[..., 0], points, oval, skin_mask) > self.config.fringe)
        return SourceFace(image, points, skin, keep.astype(np.float32), triangles, fringe)

    def _forehead_texture(self, lightness: np.ndarray, points: np.ndarray, oval: np.ndarray,
                          skin: np.ndarray) -> float:
        """The local spread of lightness in a band just above the brows over the cheeks': skin is smooth at
        this scale and hair is streaked (a fringe measured 1.35-2.6, bare foreheads 0.55-0.9 on the shared
        portraits and video faces). 0 when either region is too small to say."""
        iod = inter_ocular(points)
        sigma = max(1.0, 0.03 * iod)
        mean = cv2.GaussianBlur(lightness, (0, 0), sigma)
        spread = np.sqrt(np.maximum(cv2.GaussianBlur(lightness * lightness, (0, 0), sigma) - mean * mean, 0.0))
        inner = cv2.erode(oval, np.ones((2 * max(1, round(0.1 * iod)) + 1,) * 2, np.uint8)).astype(bool)
        up, height = _upward(points, oval.shape)
        brows, eyes = float(np.max(points[self.brows, :2] @ up)), float(np.mean(points[[468, 473], :2] @ up))
        band = inner & (height > brows) & (height < brows + 0.4 * iod)
        cheeks = inner & (height < eyes - 0.3 * iod) & (height > float(points[4, :2] @ up))
        cheeks &= skin
        if band.sum() < 20 or cheeks.sum() < 20:
            return 0.0
        return float(np.median(spread[band]) / max(float(np.median(spread[cheeks])), 1e-3))

    def plan(self, source: SourceFace, meshes: np.ndarray) -> TrackPlan:
        """meshes: (N, 478, 3) one video face's meshes in frame pixels (NaN rows: not found)."""
        c = self.config
        meshes, _ = fill_missing(np.asarray(meshes, np.float64)[..., :3])
        first = meshes[0]
        onto = umeyama_similarity(source.points[RIGID_POINTS], first[RIGID_POINTS])  # source -> first frame
        shape = apply(onto, source.points)
        shape[self.oval] = (1 - c.outline) * first[self.oval] + c.outline * shape[self.oval]
        targets = []
        for frame in meshes:
            pose = umeyama_similarity(first[RIGID_POINTS], frame[RIGID_POINTS])  # first -> this frame
            expression = apply(invert(pose), frame) - first
            targets.append(apply(pose, shape + c.expression * expression))
        return TrackPlan(np.stack(targets))

    def render(self, frame: np.ndarray, points: np.ndarray, source: SourceFace, plan: TrackPlan,
               step: int) -> np.ndarray:
        """`frame` with the source face on the video face meshed by `points` (its `step`th in the track)."""
        c = self.config
        target = plan.targets[step]
        iod = inter_ocular(points)
        lo = np.floor(np.minimum(target[:, :2].min(axis=0), points[:, :2].min(axis=0)) - 0.2 * iod).astype(int)
        hi = np.ceil(np.maximum(target[:, :2].max(axis=0), points[:, :2].max(axis=0)) + 0.2 * iod).astype(int)
        x0, y0 = np.maximum(lo, 0)
        x1, y1 = min(hi[0], frame.shape[1]), min(hi[1], frame.shape[0])
        if x1 - x0 < 4 or y1 - y0 < 4:
            return frame
        local = target - (x0, y0, 0.0)
        warped, keep, covered = self._warp(source, local, (x1 - x0, y1 - y0))
        window = frame[y0:y1, x0:x1]
        lab, warped_lab = to_lab(window), to_lab(warped)
        skin = self._skin(points - np.array([x0, y0, 0.0])[: points.shape[1]], window.shape)
        erode = max(1, round(0.04 * iod))
        own = colour_of(lab, skin, erode)
        if own is None:
            return frame
        own = averaged_colour(plan.colours, "skin", own, c.temporal)
        mask = self._blend_mask(local[:, :2], points[:, :2] - (x0, y0), covered, iod, source.fringe) * keep
        # the chroma turned, not shifted, to the video skin's: a shift turned dark lids purple and, on a grey
        # video, left the eyes and lips coloured
        moved = turn_chroma(warped_lab, source.skin, own, c.lightness)
        if c.relight > 0:  # the video face's light over the new face: its low-pass lightness replaces the source's
            moved[..., 0] += _masked_blur(lab[..., 0], mask, c.relight * iod) - _masked_blur(moved[..., 0], mask,
                                                                                          c.relight * iod)
        corrected = from_lab(moved)
        out = frame.copy()
        blended = mask[..., None] * corrected.astype(np.float32) + (1 - mask[..., None]) * window.astype(np.float32)
        out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        return out

    def _warp(self, source: SourceFace, local: np.ndarray, size: tuple[int, int]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The source image and its keep map warped so its mesh lands on `local` ((478, 3) window pixels, z
        for the drawing order), and where the mesh covers (the warp is affine per mesh triangle; triangles
        are drawn far to near, so a turned head's far side is hidden behind its near side)."""
        w, h = size
        tri = source.triangles
        dst = local[tri, :2]
        homogeneous = np.concatenate([dst, np.ones((len(tri), 3, 1))], axis=2)
        maps = np.linalg.pinv(homogeneous) @ source.points[tri, :2]  # (T, 3, 2): [x y 1] @ map = source xy
        ids = np.full((h, w), -1, np.int32)
        for k in np.argsort(-local[tri, 2].mean(axis=1)):  # MediaPipe z grows away from the camera
            cv2.fillPoly(ids, [np.round(dst[k] * 16).astype(np.int32)], int(k), shift=4)
        covered = ids >= 0
        ys, xs = np.nonzero(covered)
        chosen = maps[ids[ys, xs]]
        where = np.full((h, w, 2), -1.0, np.float32)
        where[ys, xs] = xs[:, None] * chosen[:, 0] + ys[:, None] * chosen[:, 1] + chosen[:, 2]
        warped = cv2.remap(source.image, where[..., 0], where[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT_101)
        keep = cv2.remap(source.keep, where[..., 0], where[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0.0)
        return warped, keep, covered

    def _blend_mask(self, target: np.ndarray, video: np.ndarray, covered: np.ndarray, iod: float,
                    fringe: bool = False) -> np.ndarray:
        """Soft weights of the new face: inside both outlines (the new one and the video face's own),
        where the warp reached, without the open mouth; up to the brows, or the eyes under a fringe."""
        h, w = covered.shape
        inside = np.zeros((h, w), np.uint8)
        cv2.fillPoly(inside, [np.round(target[self.oval] * 16).astype(np.int32)], 1, shift=4)
        own = np.zeros((h, w), np.uint8)
        cv2.fillPoly(own, [np.round(video[self.oval] * 16).astype(np.int32)], 1, shift=4)
        mouth = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mouth, [np.round(target[self.contours.inner_mouth] * 16).astype(np.int32)], 1, shift=4)
        face = (inside & own).astype(bool) & covered
        soft = feathered(face, self.config.feather * iod)
        # the new face ends above the higher of its brows and the video face's own (no second pair shows): a
        # source's forehead is often under hair, and the video face's forehead joins it there
        up, height = _upward(video, (h, w))
        if fringe:  # the source's brows are under hair: the video face's brows and forehead stay
            top, margin = float(np.max(target[self.eyes] @ up)), 0.5 * self.config.brow_margin * iod
        else:
            top = max(float(np.max(target[self.brows] @ up)), float(np.max(video[self.brows] @ up)))
            margin = self.config.brow_margin * iod
        soft *= 1.0 - np.clip((height - top) / max(margin, 1.0), 0.0, 1.0)
        mouth_soft = cv2.GaussianBlur(mouth.astype(np.float32), (0, 0), sigmaX=max(0.5, 0.02 * iod))
        return (soft * (1.0 - mouth_soft)).astype(np.float32)


def _upward(points: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The face's unit chin-to-forehead direction (mesh point 152 to 10) and each pixel's height along it,
    an (H, W) map (a point's height is `xy @ up`)."""
    up = points[10, :2] - points[152, :2]
    up = up / max(np.linalg.norm(up), 1e-6)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    return up, xs * up[0] + ys * up[1]


def _masked_blur(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of `values` over the `weights` region only (normalised), so nothing outside leaks in."""
    num = cv2.GaussianBlur(values * weights, (0, 0), sigmaX=max(sigma, 0.5))
    den = cv2.GaussianBlur(weights, (0, 0), sigmaX=max(sigma, 0.5))
    return num / np.maximum(den, 1e-3)


__all__ = ["SourceFace", "SwapConfig", "TrackPlan", "WeightFreeSwap"]

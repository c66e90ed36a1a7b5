"""Weight-free makeup transfer: the reference face's lip colour, skin tone, eye shadow and brow colour
moved onto a face, region by region, with the face's own luminance detail kept.

Regions come from the 478-point mesh (the parsing stage's polygons, `face.parsing`): lips (without
the inner mouth), skin (face oval with the nose, without eyes, brows, lips and eye-shadow area), eyes
(the eye-shadow band between the upper lid and the brow) and brows. Per region the colour statistics
of both faces are taken in CIE Lab (perceptual, lightness apart from chroma); the face's pixels are
moved to the reference's mean chroma (a*, b*) with their own chroma deviations scaled by the ratio of
the spreads, and their lightness shifted by a share of the mean difference, never replaced: texture,
pores and specular highlights stay. Masks are feathered inward (the face's outline and everything
outside it are untouched); `strength` blends the result with the input. On video the face's region
statistics follow an exponential moving average (`MakeupState`), so the transfer does not flicker
with the mesh or the lighting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from facefab.face.colour import (
    ColourState,
    RegionColour,
    averaged_colour,
    colour_of,
    feathered,
    from_lab,
    SKIN_TOLERANCE,
    inter_ocular,
    likeness,
    to_lab,
    transfer_colour,
)
from facefab.face.parsing import LABELS, FaceContours, face_label_mask

REGIONS = ("lips", "skin", "eyes", "brows")
EYE_LINE_SHARE = 0.3  # eye shadow: from the lid up to this share of the lid->brow distance above the lid
LIP_FEATHER = 0.2  # lips are thin: their edge is this share of the others' (or an open mouth's lips fade)


@dataclass
class MakeupConfig:
    regions: str = field(default="lips,skin,eyes", metadata={
        "help": "regions to transfer, comma-separated: lips, skin, eyes (eye shadow), brows"})
    strength: float = field(default=1.0, metadata={"help": "0: the input unchanged .. 1: the full transfer"})
    feather: float = field(default=0.25, metadata={
        "help": "edge softness, as a share of the inter-ocular distance (lips: a fifth of it)"})
    skin_lightness: float = field(default=0.6, metadata={
        "help": "share of the reference's skin lightness taken (1: all; lower keeps the scene's exposure)"})
    lip_lightness: float = 1.0
    eye_lightness: float = 0.8
    skin_reach: float = field(default=0.6, metadata={
        "help": "skin of the same colour past the mesh's outline (forehead, neck) takes the tone, fading out "
                "over this share of the inter-ocular distance"})
    temporal: float = field(default=0.6, metadata={
        "help": "video: weight of the past in the moving average of the face's region colours (0: per frame)"})

    def region_list(self) -> tuple[str, ...]:
        names = tuple(r.strip() for r in self.regions.split(",") if r.strip())
        unknown = [r for r in names if r not in REGIONS]
        if unknown or not names:
            raise ValueError(f"regions must be a comma-separated subset of {REGIONS}, got {self.regions!r}")
        return names

    def validate(self) -> None:
        self.region_list()
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if not 0.0 <= self.temporal < 1.0:
            raise ValueError(f"temporal must be in [0, 1), got {self.temporal}")


Look = dict[str, RegionColour]  # region -> its colour on a face


class FaceRegions:
    """Hard region masks of one face from its mesh, in a window of the image around the face."""

    def __init__(self, contours: FaceContours | None = None):
        self.contours = contours or FaceContours.from_mediapipe()

    @staticmethod
    def window(points: np.ndarray, shape: tuple[int, ...], margin: float = 0.1) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the face's box with `margin` inter-ocular distances around it, inside the image."""
        lo, hi = np.nanmin(points[:, :2], axis=0), np.nanmax(points[:, :2], axis=0)
        pad = margin * inter_ocular(points) + 2
        x0, y0 = np.floor(lo - pad).astype(int)
        x1, y1 = np.ceil(hi + pad).astype(int)
        return max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1)

    def masks(self, points: np.ndarray, size: tuple[int, int]) -> dict[str, np.ndarray]:
        """region -> (h, w) bool, `points` in window pixels, `size` (w, h)."""
        w, h = size
        side = max(w, h)
        labels = face_label_mask(points[:, :2], self.contours, side)[:h, :w]
        lips = np.isin(labels, (LABELS["upper_lip"], LABELS["lower_lip"]))
        brows = np.isin(labels, (LABELS["left_brow"], LABELS["right_brow"]))
        skin = np.isin(labels, (LABELS["skin"], LABELS["nose"]))
        shadow = np.zeros((h, w), np.uint8)
        for eye, brow in (("left_eye", "left_brow"), ("right_eye", "right_brow")):
            lid = points[self.contours.eyes[eye], :2]
            brow_pts = points[sorted({i for line in self.contours.brows[brow] for i in line}), :2]
            # the lid and, above it, a band reaching EYE_LINE_SHARE of the way up to the brow
            lift = EYE_LINE_SHARE * (brow_pts[:, 1].mean() - lid[:, 1].mean())
            band = np.concatenate([lid, lid + np.array([0.0, lift])])
            hull = cv2.convexHull(np.round(band * 16).astype(np.int32))
            cv2.fillPoly(shadow, [hull], 1, lineType=cv2.LINE_8, shift=4)
        eyes = shadow.astype(bool) & skin
        return {"lips": lips, "skin": skin & ~eyes, "eyes": eyes, "brows": brows}


class WeightFreeMakeup:
    """look(reference, points) once; then apply(frame, points, look, state) per frame and face."""

    def __init__(self, config: MakeupConfig | None = None, contours: FaceContours | None = None):
        self.config = config or MakeupConfig()
        self.config.validate()
        self.regions = FaceRegions(contours)

    def _window(self, image: np.ndarray, points: np.ndarray):
        # room for the skin's fade past the outline: the window's edge must never cut a change
        x0, y0, x1, y1 = FaceRegions.window(points, image.shape, self.config.skin_reach + 0.1)
        local = points[:, :2] - np.array([x0, y0], np.float64)
        return (slice(y0, y1), slice(x0, x1)), local, self.regions.masks(local, (x1 - x0, y1 - y0))

    def _erode_px(self, points: np.ndarray) -> int:
        return max(1, round(0.04 * inter_ocular(points)))

    def look(self, image: np.ndarray, points: np.ndarray) -> Look:
        """The reference face's colour per region; ValueError when a wanted region is not visible."""
        box, local, masks = self._window(image, points)
        lab = to_lab(image[box])
        look = {}
        for region in self.config.region_list():
            colour = colour_of(lab, masks[region], self._erode_px(points))
            if colour is None:
                raise ValueError(f"the reference face shows too little of its {region} to take a colour from")
            look[region] = colour
        return look

    def apply(self, frame: np.ndarray, points: np.ndarray, look: Look, state: ColourState | None = None) -> np.ndarray:
        """`frame` (H, W, 3) uint8 RGB with the look on the face meshed by `points` (478, >=2, frame pixels)."""
        c = self.config
        box, local, masks = self._window(frame, points)
        window = frame[box]
        lab = to_lab(window)
        iod = inter_ocular(points)
        out_lab = lab.copy()
        weight_sum = np.zeros(window.shape[:2], np.float32)
        lightness = {"lips": c.lip_lightness, "skin": c.skin_lightness, "eyes": c.eye_lightness, "brows": 1.0}
        for region, target in look.items():
            mask = masks[region]
            own = colour_of(lab, mask, self._erode_px(points))
            if own is None:
                continue
            if state is not None:
                own = averaged_colour(state, region, own, c.temporal)
            moved = transfer_colour(lab, own, target, lightness[region], scale_spread=region != "skin")
            soft = feathered(mask, c.feather * iod * (LIP_FEATHER if region == "lips" else 1.0))
            if region == "skin":  # the same skin past the mesh's outline (forehead, jaw, neck) fades out
                soft = np.maximum(soft, _skin_beyond(lab, mask, own, c.skin_reach * iod))
            out_lab += soft[..., None] * (moved - lab)
            weight_sum += soft
        if not weight_sum.any():
            return frame
        result = frame.copy()
        changed = weight_sum > 1e-3
        blended = from_lab(out_lab)
        if c.strength < 1.0:
            blended = cv2.addWeighted(blended, c.strength, window, 1.0 - c.strength, 0.0)
        result[box][changed] = blended[changed]
        return result


def _skin_beyond(lab: np.ndarray, skin: np.ndarray, own: RegionColour, reach_px: float) -> np.ndarray:
    """Skin weights: pixels of the skin's own colour (`likeness`), fading to 0 at `reach_px` from the
    mask, so the transfer ends where the skin ends (the hairline) or fades out along it (neck), never
    at a line of the mesh."""
    outside = (~skin).astype(np.uint8)
    distance = cv2.distanceTransform(outside, cv2.DIST_L2, 5)
    fade = np.clip(1.0 - distance / max(reach_px, 1.0), 0.0, 1.0) ** 2
    similar = likeness(lab, own, SKIN_TOLERANCE, max(2.0, 0.05 * reach_px))
    return (fade * similar).astype(np.float32)  # inside the mask fade is 1: no dip at the mesh's outline


MakeupState = ColourState  # the face's region colours averaged over a track

__all__ = ["REGIONS", "FaceRegions", "Look", "MakeupConfig", "MakeupState", "WeightFreeMakeup"]

"""Colour of face regions in CIE Lab (perceptual: lightness apart from chroma): a region's typical
colour, moving one region's colours onto another's, averaged over the frames of a video, and soft masks
feathered inward. Shared by the weight-free makeup and face swap."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


SKIN_TOLERANCE = np.array([6.0, 3.0, 3.0])  # Lab: the least spread of a skin colour (an evenly lit face)


@dataclass
class RegionColour:
    mean: np.ndarray  # (3,) Lab
    std: np.ndarray  # (3,) Lab


def inter_ocular(points: np.ndarray) -> float:
    """Distance between the eye centres (mesh iris centres 468, 473)."""
    return float(np.linalg.norm(points[468, :2] - points[473, :2]))


def to_lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def from_lab(lab: np.ndarray) -> np.ndarray:
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def colour_of(lab: np.ndarray, mask: np.ndarray, erode_px: int) -> RegionColour | None:
    """Lab mean/std over the mask's core (eroded, so edges of a neighbouring region do not count)."""
    if erode_px > 0:
        core = cv2.erode(mask.astype(np.uint8), np.ones((2 * erode_px + 1,) * 2, np.uint8)).astype(bool)
        mask = core if core.sum() >= 20 else mask
    if mask.sum() < 20:
        return None
    pixels = lab[mask]
    # the median: a region's typical colour, not pulled by highlights, blush spots or a stray edge
    return RegionColour(np.median(pixels, axis=0), pixels.std(axis=0) + 1e-3)


def transfer_colour(lab: np.ndarray, own: RegionColour, target: RegionColour, lightness: float,
              scale_spread: bool = True) -> np.ndarray:
    """Every pixel moved as the region's pixels move: chroma to the target's mean with the deviations
    scaled by the spreads' ratio (not on skin: the reference's blush would blotch the whole face);
    lightness shifted by `lightness` of the mean difference."""
    out = np.empty_like(lab)
    out[..., 0] = lab[..., 0] + lightness * (target.mean[0] - own.mean[0])
    scale = np.clip(target.std[1:] / own.std[1:], 0.5, 2.0) if scale_spread else 1.0
    out[..., 1:] = (lab[..., 1:] - own.mean[1:]) * scale + target.mean[1:]
    out[..., 0] = np.clip(out[..., 0], 0.0, 100.0)
    return out


def turn_chroma(lab: np.ndarray, own: RegionColour, target: RegionColour, lightness: float,
                max_gain: float = 2.0) -> np.ndarray:
    """Every pixel's chroma turned and scaled (one complex factor on a + ib) so the region's mean chroma
    lands on the target's; lightness shifted by `lightness` of the mean difference. Unlike a shift,
    greys stay grey and dark, weakly coloured pixels stay weak, and a grey target greys the whole face.
    A near-grey region has no hue to turn from: then the chroma is shifted."""
    source, wanted = complex(*own.mean[1:]), complex(*target.mean[1:])
    if abs(source) < 2.0:
        return transfer_colour(lab, own, target, lightness, scale_spread=False)
    factor = wanted / source
    if abs(factor) > max_gain:
        factor *= max_gain / abs(factor)
    out = lab.copy()
    out[..., 0] = np.clip(lab[..., 0] + lightness * (target.mean[0] - own.mean[0]), 0.0, 100.0)
    turned = (lab[..., 1] + 1j * lab[..., 2]) * factor
    out[..., 1], out[..., 2] = turned.real, turned.imag
    return out


def feathered(mask: np.ndarray, feather_px: float) -> np.ndarray:
    """A soft mask inside `mask`: eroded by half the feather, then blurred, so nothing leaks outside."""
    hard = mask.astype(np.float32)
    radius = max(1, round(feather_px / 2))
    inner = cv2.erode(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    soft = cv2.GaussianBlur(inner, (0, 0), sigmaX=max(0.5, feather_px / 3))
    return np.minimum(soft, hard)


def likeness(lab: np.ndarray, colour: RegionColour, tolerance: np.ndarray, blur_px: float = 2.0) -> np.ndarray:
    """(h, w) float32 ~1 where a pixel's Lab lies within 2.5 spreads of `colour` in chroma and 3 in
    lightness, falling off smoothly beyond (a spread counted as at least `tolerance`, per channel)."""
    deviation = np.abs(lab - colour.mean) / np.maximum(colour.std, tolerance)
    distance2 = (deviation[..., 1:] / 2.5) ** 2 + (deviation[..., :1] / 3.0) ** 2
    similar = np.exp(-0.5 * distance2.max(axis=-1) ** 2).astype(np.float32)
    return cv2.GaussianBlur(similar, (0, 0), sigmaX=max(0.5, blur_px))


@dataclass
class ColourState:
    """A face's region colours, averaged over the frames seen so far (one per face track)."""

    colours: dict[str, RegionColour] = field(default_factory=dict)


def averaged_colour(state: ColourState, region: str, now: RegionColour, keep: float) -> RegionColour:
    past = state.colours.get(region)
    if past is not None and keep > 0:
        now = RegionColour(keep * past.mean + (1 - keep) * now.mean, keep * past.std + (1 - keep) * now.std)
    state.colours[region] = now
    return now


__all__ = ["SKIN_TOLERANCE", "ColourState", "RegionColour", "averaged_colour", "colour_of", "feathered", "from_lab",
           "inter_ocular", "likeness", "to_lab", "transfer_colour"]

"""Weight-free talking photo: one still portrait + speech -> talking-head frames.

What `animate` from speech will run with no checkpoint. Nothing is learned here and nothing is
downloaded; it reuses the dub's parts:

1. Mouth: per frame an opening from the speech's loudness (silence: the portrait's own closed
   mouth) and a width from the shipped phonetic model (`lipsync.phonetic`), both smoothed like the
   dub's targets; `lipsync.mouth_shape.reshape_mouth` warps the portrait's mouth there and paints
   the cavity and teeth when it opens.
2. Eyes: blinks at random but natural intervals (seeded: the same inputs give the same frames),
   the upper lid pulled down over the eye by a mesh warp held still around the eye.
3. Head: a slow sway (sum of two low-frequency sines: a degree or so of roll and a percent of
   shift), applied to the whole picture last; or, given a head-pose series (a driving video's), its
   roll and the shift its yaw and pitch cause (`follow_pose`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from facefab.face.parsing import arc_between
from facefab.face.smoothing import moving_average

from ..lipsync.mouth_shape import (
    MouthShapeConfig,
    lip_gap,
    mesh_warp,
    part_axes,
    pixel_box,
    polygon_mask,
    reshape_mouth,
    smoothstep,
)
from ..lipsync.phonetic import PhoneticMouth, load_phonetic_mouth
from ..lipsync.speech import Speech, loudness_openness, sounding
from ..lipsync.weightfree import LOWER_FACE

# (outer corner, inner corner, top of the upper lid, bottom of the lower lid) per eye
EYES = ((33, 133, 159, 145), (362, 263, 386, 374))
OUTER_WIDTH_NAME = "outer_width"


@dataclass
class PortraitConfig:
    opening: float = 0.35  # the loudest speech parts the lips by this fraction of the mouth width
    width_change: float = 0.06  # one phonetic std widens or narrows the mouth by this fraction of it
    smooth_frames: int = 3  # moving average on the mouth width targets
    open_smooth_frames: int = 5  # ... on the opening: the jaw is slower than the lips
    blink_every_s: tuple[float, float] = (2.0, 5.0)  # seconds between blinks, drawn uniformly
    blink_s: float = 0.25  # a blink, closing and opening
    sway_degrees: float = 1.2  # head roll amplitude
    sway_shift: float = 0.008  # head shift amplitude, fraction of the image side
    sway_hz: tuple[float, float] = (0.13, 0.21)  # two slow frequencies, so the sway does not repeat
    seed: int = 0
    phonetic: bool = True
    mouth_ring: float = 1.1  # the mouth warp is held still this far out on the lower face (scale)
    shape: MouthShapeConfig = field(default_factory=MouthShapeConfig)


@dataclass
class PortraitPlan:
    open_px: np.ndarray  # (N,) how much further the lips part than in the portrait, pixels
    width_px: np.ndarray  # (N,) how much wider the mouth is, pixels
    blink: np.ndarray  # (N,) 0 open .. 1 closed eyes
    sway: np.ndarray  # (N, 3) roll degrees, shift x, shift y (pixels)
    still: np.ndarray  # (K, 2) the lower-face ring the mouth warp holds still


def blink_curve(n: int, fps: float, config: PortraitConfig, rng: np.random.Generator) -> np.ndarray:
    """(n,) eyelid closure: blinks at uniformly drawn intervals, each a smooth close, a frame or
    two shut, and a smooth open."""
    out = np.zeros(n)
    half = max(config.blink_s * fps / 2, 1.5)
    t = rng.uniform(0.3, 1.0) * config.blink_every_s[0] * fps
    while t < n:
        frames = np.arange(max(0, int(t - half)), min(n, int(np.ceil(t + half)) + 1))
        out[frames] = np.maximum(out[frames], smoothstep((half - np.abs(frames - t)) / (0.6 * half)))
        t += rng.uniform(*config.blink_every_s) * fps
    return out


class WeightFreePortrait:
    """The weight-free talking photo. Holds settings only; `plan` then `render` per frame."""

    name = "weightfree"

    def __init__(self, config: PortraitConfig | None = None):
        self.config = config or PortraitConfig()
        self._phonetic: PhoneticMouth | None = load_phonetic_mouth() if self.config.phonetic else None

    def plan(self, points: np.ndarray, speech: Speech, fps: float, size: tuple[int, int],
             pose: np.ndarray | None = None) -> PortraitPlan:
        """points: (478, >=2) the portrait's landmarks in its pixels; speech: per output frame;
        size: (height, width) of the portrait; pose: (N, 3) yaw, pitch, roll degrees per output frame,
        relative to the portrait's own pose, to follow instead of the sway (see `follow_pose`)."""
        c = self.config
        xy = np.asarray(points, np.float64)[:, :2]
        width = float(np.linalg.norm(xy[61] - xy[291]))
        n = len(speech)
        # the portrait's own mouth is the closed, silent one: speech only opens it further
        open_px = loudness_openness(speech) * max(c.opening * width - lip_gap(xy), 0.0)
        width_px = np.zeros(n)
        if self._phonetic is not None and speech.formants is not None:
            z = self._phonetic.predict(speech, fps)[:, self._phonetic.targets.index(OUTER_WIDTH_NAME)]
            width_px = np.nan_to_num(z) * c.width_change * width
        quiet = ~sounding(speech)
        open_px[quiet], width_px[quiet] = 0.0, 0.0
        rng = np.random.default_rng(c.seed)
        t = np.arange(n) / fps
        phases = rng.uniform(0, 2 * np.pi, size=(3, 2))
        waves = (np.sin(2 * np.pi * c.sway_hz[0] * t[:, None] + phases[None, :, 0])
                 + np.sin(2 * np.pi * c.sway_hz[1] * t[:, None] + phases[None, :, 1])) / 2  # (n, 3)
        side = float(min(size))
        sway = waves * np.array([c.sway_degrees, c.sway_shift * side, c.sway_shift * side])
        if pose is not None:
            sway = follow_pose(pose, xy, n)
        ring = xy[LOWER_FACE]
        ring = ring.mean(axis=0) + (ring - ring.mean(axis=0)) * c.mouth_ring
        return PortraitPlan(moving_average(open_px, c.open_smooth_frames), moving_average(width_px, c.smooth_frames),
                            blink_curve(n, fps, c, rng), sway, ring)

    def render(self, plan: PortraitPlan, t: int, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Frame t (H, W, 3) uint8 of the animated portrait."""
        xy = np.asarray(points, np.float64)[:, :2]
        out, _ = reshape_mouth(image, xy, plan.still, float(plan.width_px[t]), float(plan.open_px[t]),
                               self.config.shape)
        if plan.blink[t] > 0.02:
            out = close_eyes(out, xy, float(plan.blink[t]))
        return sway(out, xy, plan.sway[t])


@lru_cache(maxsize=1)
def eye_lids() -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """Per eye of EYES: (upper lid arc, lower lid arc, the whole eye loop) mesh indices, corner to
    corner."""
    from facefab.face.parsing import FaceContours

    loops = list(FaceContours.from_mediapipe().eyes.values())
    lids = []
    for outer, inner, top, bottom in EYES:
        loop = next(lp for lp in loops if outer in lp)
        lids.append((np.array(arc_between(loop, outer, inner, through=top)),
                     np.array(arc_between(loop, outer, inner, through=bottom)), np.array(loop)))
    return tuple(lids)


def close_eyes(image: np.ndarray, xy: np.ndarray, amount, reach: float = 0.85) -> np.ndarray:
    """Both upper lids lowered `amount` (1: closed; or one amount per eye of EYES) by a mesh warp held still on the lower lid and
    on a ring around each eye: the lid and its lashes come down over `reach` of the eye's height
    (all the way would fold the warp onto itself), and the slit left below them is filled with
    the lash line's colour as the eye shuts."""
    out = image
    amounts = np.broadcast_to(np.asarray(amount, np.float64), (len(EYES),))
    for (outer, inner, _, bottom), (upper, lower, loop), amount in zip(EYES, eye_lids(), amounts, strict=True):
        if amount <= 0.02:
            continue
        centre, u, v, eye_w = part_axes(xy, outer, inner, bottom)
        along_low = (xy[lower] - centre) @ u
        order = np.argsort(along_low)
        lid = upper[1:-1]  # the corners stay
        along, down = (xy[lid] - centre) @ u, (xy[lid] - centre) @ v
        drop = np.interp(along, along_low[order], ((xy[lower] - centre) @ v)[order]) - down
        moved = xy[lid] + v[None, :] * (amount * reach * drop)[:, None]
        middle = xy[loop].mean(axis=0)
        ring = middle + (xy[loop] - middle) * 1.8
        held = np.concatenate([xy[lower], ring])
        out = mesh_warp(out, np.concatenate([xy[lid], held]), np.concatenate([moved, held]), 0.04 * eye_w,
                        pixel_box(ring, 0.2 * eye_w, out.shape), inside=ring)
        shut = (amount - 0.5) / 0.5
        if shut > 0:
            out = _fill_slit(out, np.concatenate([xy[[outer]], moved, xy[[inner]]]), xy[lower[::-1]], v,
                             float(smoothstep(shut)))
    return out


def _fill_slit(image: np.ndarray, lid: np.ndarray, lower: np.ndarray, down: np.ndarray, weight: float
               ) -> np.ndarray:
    """The gap between the lowered lid line and the lower lid painted, `weight` of the way, in the
    colour just under the lid line (its lashes)."""
    polygon = np.concatenate([lid, lower])
    x0, y0, x1, y1 = pixel_box(polygon, 2, image.shape)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image
    mask = cv2.GaussianBlur(polygon_mask(polygon, (x0, y0, x1, y1)), (0, 0), 0.7)[..., None] * weight
    samples = np.round(lid[1:-1] + down[None, :]).astype(int)
    samples[:, 0] = np.clip(samples[:, 0], 0, image.shape[1] - 1)
    samples[:, 1] = np.clip(samples[:, 1], 0, image.shape[0] - 1)
    lash = image[samples[:, 1], samples[:, 0]].astype(np.float32).mean(axis=0)
    out = image.copy()
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(region * (1 - mask) + lash * mask + 0.5, 0, 255).astype(np.uint8)
    return out


def follow_pose(pose: np.ndarray, xy: np.ndarray, n: int, max_degrees: float = 30.0) -> np.ndarray:
    """(n, 3) sway parameters (image rotation degrees, dx, dy) that follow a head-pose series
    (yaw, pitch, roll degrees relative to the portrait): the roll exactly, yaw and pitch as the shift of
    the face they cause (a photo warp cannot turn a head: half the face size times their sine)."""
    pose = np.clip(np.asarray(pose, np.float64)[:n, :3], -max_degrees, max_degrees)
    if len(pose) != n:
        raise ValueError(f"pose has {len(pose)} frames for {n} output frames")
    extent = xy.max(axis=0) - xy.min(axis=0)
    yaw, pitch, roll = np.radians(pose[:, 0]), np.radians(pose[:, 1]), pose[:, 2]
    # roll > 0 is clockwise in the image; OpenCV's positive angle is counter-clockwise
    return np.stack([-roll, 0.5 * extent[0] * np.sin(yaw), -0.5 * extent[1] * np.sin(pitch)], axis=1)


def sway(image: np.ndarray, xy: np.ndarray, roll_shift: np.ndarray) -> np.ndarray:
    """The picture rolled about the face centre and shifted (degrees, dx, dy); borders reflected."""
    roll, dx, dy = (float(v) for v in roll_shift)
    if abs(roll) < 1e-3 and abs(dx) < 1e-3 and abs(dy) < 1e-3:
        return image
    centre = tuple(float(v) for v in xy.mean(axis=0))
    m = cv2.getRotationMatrix2D(centre, roll, 1.0)
    m[:, 2] += (dx, dy)
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


__all__ = ["PortraitConfig", "PortraitPlan", "WeightFreePortrait", "blink_curve", "close_eyes", "eye_lids",
           "follow_pose", "sway"]

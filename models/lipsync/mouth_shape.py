"""Reshape a mouth in an image to a target opening and width: a smooth warp of the lower face
driven by the face-mesh lip points, and a synthesised mouth cavity where the lips part further
than the picture shows.

Used by the weight-free dub (a chosen real mouth warped the rest of the way to the predicted shape)
and reusable for any generator that has a face, its mesh and a mouth shape to reach.

The warp moves the lip contours (corners outward for width; the lower lip and, less, the chin
down and the upper lip slightly up for opening) and holds a ring of points (the blend region's
edge, the nose) still; the displacement between them is linear over Delaunay triangles, smoothed,
and applied as a backward map (`cv2.remap`), so nothing outside the ring moves. Inside a mouth
opened from closed, a shaded cavity with the upper front teeth fills the new gap; an open mouth's own inside is stretched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from facefab.face.parsing import LOWER_INNER_LIP, MOUTH_CORNERS_OUTER, UPPER_INNER_LIP

CHIN_POINTS = (152, 148, 176, 377, 400, 199, 175)  # move with the jaw, less than the lower lip
STILL_POINTS = (1, 2, 4, 98, 327, 50, 280)  # nose and cheeks beside it: the jaw does not move them


@lru_cache(maxsize=1)
def lip_loops() -> tuple[np.ndarray, np.ndarray]:
    """(outer lip loop, inner mouth loop) mesh indices."""
    from facefab.face.parsing import FaceContours

    contours = FaceContours.from_mediapipe()
    return np.array(contours.outer_lips), np.array(contours.inner_mouth)


@dataclass
class MouthShapeConfig:
    max_width_change: float = 0.25  # at most this fraction of the mouth's width, either way
    max_opening: float = 0.6  # the lips part at most this fraction of the mouth's width
    upper_lip_share: float = 0.2  # of an opening change, the upper lip takes this part (lower: the rest)
    chin_share: float = 0.6  # the chin follows the lower lip this much
    dead_zone: float = 0.0  # shape differences under this fraction of the mouth width are not warped
    smooth: float = 0.05  # the warp's displacement is blurred this much (fraction of the mouth width)
    cavity_color: tuple[float, float, float] = (0.24, 0.11, 0.11)  # deep inner mouth, fraction of the lips' colour
    cavity_edge_color: tuple[float, float, float] = (0.45, 0.24, 0.24)  # just inside the lips
    teeth_depth: float = 0.12  # the upper front teeth show this far below the upper lip (fraction of the width)
    teeth_brightness: float = 1.3  # teeth luma relative to the lips' mean colour
    teeth_tint: tuple[float, float, float] = (1.0, 0.97, 0.9)  # warm off-white
    closed_gap: float = 0.08  # a mouth parted less than this (fraction of its width) gets a painted cavity;
    # one already open has a real inside, which the warp stretches


def part_axes(xy: np.ndarray, a: int, b: int, toward: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A face part's frame from its corners (mesh points a, b): centre, unit vector a to b, the
    unit normal pointing to mesh point `toward` whatever the roll, and the corner distance."""
    left, right = xy[a], xy[b]
    width = float(np.linalg.norm(right - left))
    u = (right - left) / max(width, 1e-6)
    v = np.array([-u[1], u[0]])
    if np.dot(xy[toward] - (left + right) / 2, v) < 0:
        v = -v
    return (left + right) / 2, u, v, width


def _axes(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mouth centre, unit vector corner to corner, unit vector toward the chin, mouth width."""
    return part_axes(xy, *MOUTH_CORNERS_OUTER, 152)


def lip_gap(xy: np.ndarray) -> float:
    return float(np.linalg.norm(xy[UPPER_INNER_LIP] - xy[LOWER_INNER_LIP]))


def moved_points(xy: np.ndarray, d_width: float, d_open: float, config: MouthShapeConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, new positions) of the mesh points the reshape moves: the lips and the chin."""
    outer, inner = lip_loops()
    centre, u, v, width = _axes(xy)
    lips = np.unique(np.concatenate([outer, inner]))
    idx = np.concatenate([lips, np.array(CHIN_POINTS)])
    p = xy[idx]
    along = np.clip(((p - centre) @ u) / max(width / 2, 1e-6), -1.0, 1.0)
    below = (p - centre) @ v > 0
    taper = np.sqrt(np.clip(1.0 - along**2, 0.0, 1.0))  # corners do not move up or down
    share = np.where(below, 1.0 - config.upper_lip_share, -config.upper_lip_share)
    share[len(lips):] = config.chin_share * (1.0 - config.upper_lip_share)
    shift = u[None, :] * (along * d_width / 2)[:, None] + v[None, :] * (share * taper * d_open)[:, None]
    shift[len(lips):] = v[None, :] * share[len(lips):, None] * d_open
    return idx, p + shift


def pixel_box(points: np.ndarray, pad: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) whole-pixel box around `points` grown by `pad`, inside an image of `shape`."""
    lo = np.floor(points.min(axis=0) - pad).astype(int)
    hi = np.ceil(points.max(axis=0) + pad).astype(int) + 1
    return max(lo[0], 0), max(lo[1], 0), min(hi[0], shape[1]), min(hi[1], shape[0])


def mesh_warp(image: np.ndarray, sources: np.ndarray, targets: np.ndarray, smooth: float,
              box: tuple[int, int, int, int], inside: np.ndarray | None = None) -> np.ndarray:
    """`image` with the points `sources` moved to `targets` (held points: equal rows), inside box
    (x0, y0, x1, y1): the displacement is linear over the Delaunay triangles of the targets (zero at
    the box corners, so nothing outside the held ring moves and nothing oscillates), then
    Gaussian-smoothed by `smooth` pixels so the triangle edges leave no creases. `inside`: a
    polygon outside which nothing may move even after the smoothing."""
    x0, y0, x1, y1 = box
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image
    field = _displacement(sources, targets, smooth, box)
    if inside is not None:
        field *= polygon_mask(cv2.convexHull(inside.astype(np.float32))[:, 0].astype(np.float64), box)[..., None]
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.remap(image, xs + field[..., 0], ys + field[..., 1], cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT_101)
    return out


def _displacement(sources: np.ndarray, targets: np.ndarray, smooth: float, box: tuple[int, int, int, int]
                  ) -> np.ndarray:
    """(h, w, 2) float32 backward displacement over box: piecewise linear over the targets' Delaunay
    triangles, blurred by `smooth` pixels. Blurred that much it varies slowly, so it is interpolated
    on a grid a third of the blur apart and resampled bilinearly: the same field to a small fraction
    of a pixel, at a tenth of the cost of interpolating every pixel."""
    from scipy.interpolate import LinearNDInterpolator

    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = x1 - x0, y1 - y0
    corners = np.array([[x0, y0], [x1 - 1, y0], [x0, y1 - 1], [x1 - 1, y1 - 1]], np.float64)
    q = np.concatenate([targets, corners])
    back = np.concatenate([sources - targets, np.zeros_like(corners)])
    step = max(1.0, smooth / 3.0)
    cw, ch = max(2, math.ceil((w - 1) / step) + 1), max(2, math.ceil((h - 1) / step) + 1)
    gx, gy = np.linspace(x0, x1 - 1, cw), np.linspace(y0, y1 - 1, ch)
    sx, sy = (cw - 1) / max(w - 1, 1), (ch - 1) / max(h - 1, 1)  # grid cells per pixel
    coarse = LinearNDInterpolator(q, back, fill_value=0.0)(*np.meshgrid(gx, gy)).astype(np.float32)
    if smooth > 0:
        coarse = cv2.GaussianBlur(coarse, (0, 0), smooth * sx, sigmaY=smooth * sy)
    if (cw, ch) == (w, h):
        return coarse
    mx, my = np.meshgrid(np.arange(w, dtype=np.float32) * sx, np.arange(h, dtype=np.float32) * sy)
    return cv2.remap(coarse, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def polygon_mask(polygon: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(h, w) float32 anti-aliased fill of `polygon` (sub-pixel vertices) inside box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.fillPoly(mask, [np.round((polygon - (x0, y0)) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    return mask


def _upper_edge(inner_xy: np.ndarray, centre: np.ndarray, u: np.ndarray, v: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The upper inner lip line as (along, down) coordinates sorted along the mouth: of the inner
    loop's two chains from corner to corner, the one nearer the nose."""
    along, down = (inner_xy - centre) @ u, (inner_xy - centre) @ v
    i0, i1 = int(np.argmin(along)), int(np.argmax(along))
    n = len(inner_xy)
    forward = [(i0 + k) % n for k in range((i1 - i0) % n + 1)]
    backward = [(i1 + k) % n for k in range((i0 - i1) % n + 1)]
    upper = np.array(min(forward, backward, key=lambda chain: down[chain].mean()))
    order = np.argsort(along[upper])
    return along[upper][order], down[upper][order]


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, the cubic 3x^2 - 2x^3 between: a ramp without kinks."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def paint_cavity(image: np.ndarray, new_xy: np.ndarray, config: MouthShapeConfig) -> np.ndarray:
    """A mouth that was closed, opened by the warp: what the stretch made of the lip line becomes a
    mouth cavity in the lips' own hue, dark in the middle and lighter toward the lips, with the
    upper front teeth showing under the upper lip (a shaded template band, lit like the face).
    The cavity's soft edge stays inside the inner lip line, so a thin lip is not darkened."""
    outer, inner = lip_loops()
    box = pixel_box(new_xy[outer], 3, image.shape)
    x0, y0, x1, y1 = box
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image
    gap = lip_gap(new_xy)
    inside = polygon_mask(new_xy[inner], box)
    if inside.sum() < 1:
        return image
    region = image[y0:y1, x0:x1].astype(np.float32)
    ring = (polygon_mask(new_xy[outer], box) > 0.5) & (inside < 0.1)
    lip_color = region[ring].mean(axis=0) if ring.sum() >= 8 else region.reshape(-1, 3).mean(axis=0)
    # depth: 0 at the inner lip edge, 1 a fifth of the gap in
    depth = cv2.distanceTransform((inside > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    depth = np.clip(depth / max(gap / 5, 1.0), 0.0, 1.0)[..., None]
    edge = lip_color * np.array(config.cavity_edge_color, np.float32)
    deep = lip_color * np.array(config.cavity_color, np.float32)
    cavity = edge * (1 - depth) + deep * depth
    teeth = _teeth(new_xy, inner, box, gap, lip_color, config)
    if teeth is not None:
        color, cover = teeth
        cavity = cavity * (1 - cover) + color * cover
    alpha = (cv2.GaussianBlur(inside, (0, 0), max(gap / 10, 0.7)) * inside)[..., None]
    out = image.copy()
    out[y0:y1, x0:x1] = np.clip(region * (1 - alpha) + cavity * alpha + 0.5, 0, 255).astype(np.uint8)
    return out


def _teeth(new_xy: np.ndarray, inner: np.ndarray, box: tuple[int, int, int, int], gap: float,
           lip_color: np.ndarray, config: MouthShapeConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """(colour (h, w, 3), cover (h, w, 1)) of the upper front teeth inside box, or None when the
    mouth is too little open to show them: a band hanging from the upper inner lip, as deep as
    `teeth_depth` of the mouth width (at most half the gap), fading toward the corners, shaded
    under the lip and at the biting edge, its brightness taken from the lips' (the face's light)."""
    if config.teeth_depth <= 0:
        return None
    centre, u, v, width = _axes(new_xy)
    depth = min(config.teeth_depth * width, 0.5 * gap)
    if depth < 1.0:
        return None
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    rel = np.stack([xs - centre[0], ys - centre[1]], axis=-1)
    along, down = rel @ u, rel @ v
    edge_along, edge_down = _upper_edge(new_xy[inner], centre, u, v)
    below = down - np.interp(along, edge_along, edge_down)  # pixels under the upper inner lip
    side = np.abs(along) / max(width / 2, 1e-6)
    cover = smoothstep((depth - below) / max(0.15 * depth, 0.5)) * smoothstep((0.8 - side) / 0.3)
    cover *= smoothstep(below / max(0.1 * depth, 0.5) + 1.0)
    shade = (0.78 + 0.22 * smoothstep(below / max(0.3 * depth, 0.5))) * (1.0 - 0.25 * side)
    shade *= 1.0 - 0.12 * smoothstep((below - 0.7 * depth) / max(0.3 * depth, 0.5))
    level = min(float(lip_color.mean()) * config.teeth_brightness, 245.0)
    color = (level * np.array(config.teeth_tint, np.float32))[None, None, :] * shade[..., None].astype(np.float32)
    return color, cover[..., None].astype(np.float32)


def reshape_mouth(image: np.ndarray, points: np.ndarray, still: np.ndarray, d_width: float, d_open: float,
                  config: MouthShapeConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`image` (H, W, 3) whose mouth (mesh `points` (478, >=2) in image pixels) is made `d_width`
    pixels wider and opened `d_open` pixels more (negative: narrower, closing; both clipped to a
    plausible range). `still`: (K, 2) points the warp must not move (the edge of the region the
    caller blends). Returns (image, the moved points (478, 2))."""
    config = config or MouthShapeConfig()
    xy = np.asarray(points, np.float64)[:, :2]
    _, _, _, width = _axes(xy)
    gap = lip_gap(xy)
    # changes within the dead zone are left to the chosen real mouth: warping every pixel of
    # difference would turn the mesh's frame-to-frame noise into visible shimmer
    dead = config.dead_zone * width
    d_width, d_open = (float(np.sign(d) * max(abs(d) - dead, 0.0)) for d in (d_width, d_open))
    d_width = float(np.clip(d_width, -config.max_width_change * width, config.max_width_change * width))
    d_open = float(np.clip(d_open, -gap, max(config.max_opening * width - gap, 0.0)))
    if abs(d_width) < 0.25 and abs(d_open) < 0.25:
        return image, xy
    idx, moved = moved_points(xy, d_width, d_open, config)
    fixed = np.concatenate([np.asarray(still, np.float64), xy[list(STILL_POINTS)]])
    sources = np.concatenate([xy[idx], fixed])
    targets = np.concatenate([moved, fixed])
    box = pixel_box(np.concatenate([sources, targets]), 2, image.shape)
    out = mesh_warp(image, sources, targets, config.smooth * width, box, inside=np.asarray(still, np.float64))
    new_xy = xy.copy()
    new_xy[idx] = moved
    if d_open > 0.5 and gap < config.closed_gap * width:
        out = paint_cavity(out, new_xy, config)
    return out, new_xy

"""Weight-free lip dubbing in the spirit of Video Rewrite (Bregler et al., SIGGRAPH 1997).

What `facefab dub` runs when no checkpoint is configured. Nothing is downloaded: the mapping is
fitted per video, on the video itself, or comes from the small speaker-independent model the
project fitted and ships (`phonetic.py`).

1. Mouth shape (`mouth_features`): per frame, a few distances between face-mesh points in the
   aligned crop (inner/outer lip opening, outer/inner mouth width, jaw drop, lip thickness),
   divided by the crop side, so they do not depend on face size.
2. Audio -> mouth shape (`MouthModel`): when the source has enough speech of its own
   (silero-vad), a ridge regression from its log-mel windows to its mouth shapes (numpy closed
   form, penalty chosen by blocked cross-validation); when it has too little speech, or the
   regression does not predict its own held-out frames, loudness is mapped onto opening
   (quiet speech: nearly closed, loud: this video's wider openings, `open_percentile`) and the shipped
   phonetic model gives width and lip shape from the formants. Silence maps to the video's own
   closed mouth at its usual width.
3. Selection (`select_frames`): for every output frame, the source frame whose mouth best fits
   the predicted shape and whose head pose (and, with `expression_weight`, upper-face expression:
   cheeks, eyes, brows) fits the frame it is pasted into, chosen jointly over
   time by Viterbi: continuing with the next source frame is free and a jump costs, so the
   output replays runs of real mouth motion instead of flickering between single frames. The
   chosen mouth is then warped the rest of the way to the target opening and width
   (`mouth_shape.reshape_mouth`).
4. Transfer (`transfer_mouth`): the chosen frame's lower face is warped into the current frame's
   aligned crop by the similarity that maps its rigid lower-face points (nose, cheeks, eye
   corners) onto the current ones, gain-matched on the skin around it and blended through a
   feathered mask covering both frames' lower faces (so the old mouth and chin disappear).
   `align.paste_back` puts the result into the frame; outside the mask the frame is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np

from facefab.face.alignment import nonzero_box, umeyama_similarity
from facefab.face.parsing import (
    LOWER_INNER_LIP,
    MOUTH_CORNERS_INNER,
    MOUTH_CORNERS_OUTER,
    UPPER_INNER_LIP,
    UPPER_OUTER_LIP,
)
from facefab.face.smoothing import moving_average

from .mouth_shape import MouthShapeConfig, polygon_mask, reshape_mouth
from .phonetic import PhoneticMouth, load_phonetic_mouth, ridge_solution
from .speech import Speech, loudness_openness, sounding, speech_design

LOWER_OUTER_LIP = 17
SUBNASALE = 2
CHIN = 152

# (name, mesh point a, mesh point b, matching weight): mouth shape = distances a-b / crop side.
_FEATURES = (
    ("inner_open", UPPER_INNER_LIP, LOWER_INNER_LIP, 2.0),
    ("outer_open", UPPER_OUTER_LIP, LOWER_OUTER_LIP, 1.0),
    ("outer_width", *MOUTH_CORNERS_OUTER, 0.75),
    ("inner_width", *MOUTH_CORNERS_INNER, 0.5),
    ("jaw_drop", SUBNASALE, CHIN, 1.0),
    ("upper_lip", UPPER_OUTER_LIP, UPPER_INNER_LIP, 0.25),
    ("lower_lip", LOWER_INNER_LIP, LOWER_OUTER_LIP, 0.25),
)
FEATURE_NAMES = tuple(f[0] for f in _FEATURES)
FEATURE_WEIGHTS = np.array([f[3] for f in _FEATURES])
OPENING = np.array([name in ("inner_open", "outer_open", "jaw_drop") for name in FEATURE_NAMES])
WIDTH = np.array([name in ("outer_width", "inner_width") for name in FEATURE_NAMES])
INNER_OPEN, OUTER_WIDTH = FEATURE_NAMES.index("inner_open"), FEATURE_NAMES.index("outer_width")

# Points the jaw does not move (nose, cheeks beside the nose, eye corners): the chosen frame's lower
# face is aligned to the current one on these.
ANCHORS = np.array([4, 1, 2, 98, 327, 50, 280, 36, 266, 33, 133, 362, 263])
# Lower face: nostril base, cheeks beside the mouth, jaw line from angle to angle over the chin.
LOWER_FACE = np.array([98, 2, 327, 426, 436, 432, 422, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150,
                       136, 202, 212, 216, 206])
# Jaw points on the face's side silhouette: pulled toward the mouth so the mask's side edges stay
# on cheek skin (blending skin into skin) instead of cutting through the background.
JAW_SIDES = np.isin(LOWER_FACE, [365, 379, 378, 149, 150, 136])
MOUTH_CENTRE = np.array([UPPER_OUTER_LIP, LOWER_OUTER_LIP, *MOUTH_CORNERS_OUTER])
# Head-pose proxy in the aligned crop: nose tip and the face's left/right extremes move with yaw
# and pitch but not with the mouth.
POSE_POINTS = np.array([4, 234, 454])
# Upper-face expression in the aligned crop (lid to cheek, lid to lid, brow to lid on both sides):
# a smile lifts the cheeks toward the eyes and narrows them, so a grin's mouth is chosen for a
# smiling face and a neutral mouth for a neutral one.
EXPRESSION_PAIRS = np.array([[145, 205], [374, 425], [159, 145], [386, 374], [105, 159], [334, 386]])


@dataclass
class WeightFreeConfig:
    context: int = 8  # mel frames each side of a video frame (10 ms hop: +-80 ms)
    min_fit_speech_s: float = 2.5  # own speech needed to fit the audio -> mouth regression
    min_fit_r: float = 0.3  # held-out correlation the regression must reach (and beat loudness's)
    candidates: int = 24  # best-fitting source frames considered per output frame
    jump_cost: float = 2.0  # cost of cutting to another source frame (continuing is free)
    hold_cost: float = 0.5  # cost of showing the same source frame twice in a row
    pose_weight: float = 2.0  # head-pose mismatch (per pose std) against mouth-shape mismatch
    expression_weight: float = 0.0  # upper-face expression mismatch (per std), likewise (off: see README)
    smooth_frames: int = 3  # moving average on the predicted mouth shapes
    open_smooth_frames: int = 5  # ... on the opening ones when longer: the jaw is slower than the lips
    mask_margin: float = 0.08  # mask grows this much (fraction of its size) beyond the lower face
    side_inset: float = 0.3  # jaw-side points move this far toward the mouth (fraction of the distance)
    feather: float = 0.02  # Gaussian feather of the mask, fraction of the crop side
    match_color: bool = True  # per-channel gain so the pasted skin matches the frame's
    crossfade_frames: int = 2  # at a cut the old run fades out under the new one over this many frames
    open_percentile: float = 75.0  # the loudest speech opens the mouth like this video's frames above it
    phonetic: bool = True  # the shipped speech -> mouth model when the video's own speech cannot be fitted
    reshape: float = 1.0  # how far the chosen mouth is warped toward the target shape (0: not at all)
    min_open_spread: float = 0.05  # the least spread (std, crop units) of the opening targets reach
    min_width_spread: float = 0.015  # ... and of the width targets
    shape: MouthShapeConfig = field(default_factory=MouthShapeConfig)


@dataclass
class DubPlan:
    choice: np.ndarray  # (N,) source frame whose mouth each output frame shows
    targets: np.ndarray  # (N, F) predicted mouth shape, standardised like the bank
    fit: str  # "ridge" (own speech) or "loudness" (fallback)
    fit_r: float  # held-out correlation of the ridge fit with inner opening (nan when not fitted)
    fade_from: np.ndarray | None = None  # (N,) the cut-off run's continuation shown fading out, -1: none
    fade_weight: np.ndarray | None = None  # (N,) weight of `choice` over `fade_from` (1: no fade)
    # mouth shapes in crop units (distance / crop side), about the bank's mean: a bank frame's is
    # shapes * std, a target's is targets * scale, where scale is the bank's spread but at least a
    # talking mouth's (a source that barely moves its lips still gets visible speech)
    shapes: np.ndarray | None = None
    std: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def mean_run(self) -> float:
        """Mean number of output frames between cuts (a cut: not the next or the same source frame)."""
        cuts = np.count_nonzero(~np.isin(np.diff(self.choice), (0, 1)))
        return len(self.choice) / (cuts + 1)


# -- mouth shape and pose -----------------------------------------------------------------------

def mouth_features(points: np.ndarray, size: float) -> np.ndarray:
    """(T, F) mouth shape from (T, 478, >=2) crop-pixel landmarks; NaN rows where points are NaN."""
    xy = np.asarray(points, np.float64)[..., :2]
    a = np.array([f[1] for f in _FEATURES])
    b = np.array([f[2] for f in _FEATURES])
    return np.linalg.norm(xy[:, a] - xy[:, b], axis=-1) / float(size)


def pose_features(points: np.ndarray, size: float) -> np.ndarray:
    """(T, 6) head-pose proxy: crop positions of the nose tip and the two face extremes."""
    return np.asarray(points, np.float64)[:, POSE_POINTS, :2].reshape(len(points), -1) / float(size)


def expression_features(points: np.ndarray, size: float) -> np.ndarray:
    """(T, 6) upper-face expression: the EXPRESSION_PAIRS distances / crop side."""
    xy = np.asarray(points, np.float64)[..., :2]
    return np.linalg.norm(xy[:, EXPRESSION_PAIRS[:, 0]] - xy[:, EXPRESSION_PAIRS[:, 1]], axis=-1) / float(size)


def weighted_sq_distances(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N, B) sum_k w_k (a[n, k] - b[j, k])^2 without the (N, B, F) intermediate (long audio
    against a long bank would need gigabytes)."""
    aw = a * weights
    d = (aw * a).sum(axis=1)[:, None] + ((b * weights) * b).sum(axis=1)[None, :] - 2.0 * aw @ b.T
    return np.maximum(d, 0.0)


def _standardiser(values: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    mean = np.nanmean(values, axis=0)
    std = np.maximum(np.nanstd(values, axis=0), floor)
    return mean, std


# -- audio -> mouth shape -----------------------------------------------------------------------

def fit_ridge(x: np.ndarray, y: np.ndarray, lambdas=(1.0, 10.0, 100.0, 1000.0, 1e4),
              folds: int = 5) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge regression with the penalty chosen by contiguous-block cross-validation (neighbouring
    video frames are nearly identical, so shuffled folds would reward overfitting). Returns
    (coef, bias, held-out Pearson r of the first output column at the chosen penalty)."""
    blocks = np.array_split(np.arange(len(x)), folds)
    best = (math.inf, lambdas[0], math.nan)
    for lam in lambdas:
        pred = np.empty_like(y)
        for held in blocks:
            train = np.setdiff1d(np.arange(len(x)), held)
            coef, bias = ridge_solution(x[train], y[train], lam)
            pred[held] = x[held] @ coef + bias
        err = float(((pred - y) ** 2).mean())
        if err < best[0]:
            r = np.corrcoef(pred[:, 0], y[:, 0])[0, 1] if np.std(pred[:, 0]) > 0 else 0.0
            best = (err, lam, float(r))
    coef, bias = ridge_solution(x, y, best[1])
    return coef, bias, best[2]


class MouthModel:
    """Audio -> mouth shape for one video, in the video's standardised mouth-shape units.

    Three fits, the first that applies: "ridge" (this video's own speech, when it has enough and
    the regression predicts its held-out frames), "phonetic" (the shipped speaker-independent
    model: opening from loudness, the other features from the sounds) and "loudness" (opening
    only, when the speech has no formants or the phonetic model is switched off)."""

    def __init__(self, bank: np.ndarray, valid: np.ndarray, own: Speech | None, fps: float,
                 config: WeightFreeConfig, phonetic: PhoneticMouth | None = None):
        self.config, self.fps = config, fps
        shapes = bank[valid]
        openness = shapes[:, 0]
        closed = openness <= np.percentile(openness, 20)
        wide = openness >= np.percentile(openness, config.open_percentile)
        self.closed = shapes[closed].mean(axis=0)
        self.open = shapes[wide].mean(axis=0)
        # At rest the mouth is closed and otherwise as this face usually is: the closed frames'
        # width would carry whatever expression they happened to have.
        self.rest = np.where(OPENING, self.closed, 0.0)
        self.fit, self.fit_r, self._ridge = "loudness", math.nan, None
        if phonetic is not None and phonetic.targets != FEATURE_NAMES:
            raise ValueError(f"the phonetic mouth model predicts {phonetic.targets}, not {FEATURE_NAMES}")
        self._phonetic = phonetic
        speech_frames = int(own.vad[valid].sum()) if own is not None else 0
        if own is not None and speech_frames >= config.min_fit_speech_s * fps:
            keep = valid & own.vad
            coef, bias, r = fit_ridge(speech_design(own)[keep], bank[keep])
            self.fit_r = r
            # Keep the regression only where it predicts this speaker's own held-out mouth opening
            # better than loudness does (drive_d6: 0.72 vs 0.31; drive_d10: 0.18 vs -0.39).
            loud = loudness_openness(own)[keep]
            loud_r = np.corrcoef(loud, bank[keep, 0])[0, 1] if np.std(loud) > 0 else 0.0
            if r >= max(config.min_fit_r, loud_r):
                self.fit, self._ridge = "ridge", (coef, bias)
        if self.fit == "loudness" and self._phonetic is not None:
            self.fit = "phonetic"

    @property
    def _trusted(self) -> np.ndarray:
        """(F,) features the phonetic model predicts, weighted by how well each held out on unseen
        speakers (r 0.5 or more: fully); 0 where it does not predict them (r < 0.2: opening and
        lip thickness, which loudness and the rest shape cover)."""
        if self.fit != "phonetic":
            return np.zeros(len(FEATURE_NAMES))
        r = np.nan_to_num(np.array([self._phonetic.held_out_r(name) for name in FEATURE_NAMES]))
        return np.where(~OPENING & (r >= 0.2), np.clip(r / 0.5, 0.4, 1.0), 0.0)

    @property
    def weights(self) -> np.ndarray:
        if self._ridge:
            return FEATURE_WEIGHTS
        # loudness only knows how open the mouth is, not its width or rounding
        base = np.where(OPENING, FEATURE_WEIGHTS, 0.1 * FEATURE_WEIGHTS)
        trusted = self._trusted
        return np.where(trusted > 0, trusted * FEATURE_WEIGHTS, base)

    def predict(self, speech: Speech) -> np.ndarray:
        """(T, F) target mouth shapes for new speech; silence gets the rest shape."""
        if self._ridge:
            coef, bias = self._ridge
            shapes = speech_design(speech) @ coef + bias
        else:
            q = loudness_openness(speech)[:, None]
            shapes = self.closed + q * (self.open - self.closed)
            trusted = self._trusted > 0
            if trusted.any() and speech.formants is not None:
                # z-scores over the new speaker's voiced frames, read as this face's bank z-scores
                shapes[:, trusted] = self._phonetic.predict(speech, self.fps)[:, trusted]
        shapes[~sounding(speech)] = self.rest
        smoothed = moving_average(shapes, self.config.smooth_frames)
        if self.config.open_smooth_frames > self.config.smooth_frames:
            # the jaw is slower than the lips' shape, and the loudness envelope jumps frame to frame
            smoothed[:, OPENING] = moving_average(shapes[:, OPENING], self.config.open_smooth_frames)
        return smoothed


# -- selection ------------------------------------------------------------------------------------

def select_frames(unary: np.ndarray, bank: np.ndarray, weights: np.ndarray, config: WeightFreeConfig) -> np.ndarray:
    """Viterbi over source frames: (N,) choice minimising sum of `unary` (N, B) costs plus
    transitions: 0 to the next source frame, `hold_cost` to the same one, otherwise `jump_cost`
    plus the weighted mouth-shape distance between the two (a cut between look-alikes is cheap).

    Each output frame considers its `candidates` best-fitting frames plus the successors of the
    previous frame's `candidates` cheapest paths, so a good run can always continue.
    """
    n, b = unary.shape
    k = min(config.candidates, b)
    shapes = np.nan_to_num(bank)
    top = np.argpartition(unary, k - 1, axis=1)[:, :k]
    cands, cost, back = [top[0]], unary[0, top[0]], []
    for t in range(1, n):
        prev = cands[-1]
        leaders = prev[np.argsort(cost)[:k]]
        cur = np.unique(np.concatenate([top[t], np.minimum(leaders + 1, b - 1)]))
        diff = shapes[cur][None, :, :] - shapes[prev][:, None, :]
        trans = config.jump_cost + (diff * diff * weights).sum(axis=-1)
        trans[cur[None, :] == prev[:, None] + 1] = 0.0
        trans[cur[None, :] == prev[:, None]] = config.hold_cost
        total = cost[:, None] + trans
        arg = np.argmin(total, axis=0)
        cost = total[arg, np.arange(len(cur))] + unary[t, cur]
        cands.append(cur)
        back.append(arg)
    path = np.empty(n, np.int64)
    j = int(np.argmin(cost))
    path[-1] = cands[-1][j]
    for t in range(n - 1, 0, -1):
        j = int(back[t - 1][j])
        path[t - 1] = cands[t - 1][j]
    return path


# -- transfer -------------------------------------------------------------------------------------

def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 affine applying `inner`, then `outer`."""
    out = np.asarray(outer, np.float64)[:, :2] @ np.asarray(inner, np.float64)
    out[:, 2] += np.asarray(outer, np.float64)[:, 2]
    return out


def lower_face_points(points: np.ndarray, side_inset: float) -> np.ndarray:
    """(K, 2) lower-face outline of one frame, jaw sides pulled in toward the mouth."""
    xy = np.asarray(points, np.float64)[:, :2]
    outline = xy[LOWER_FACE].copy()
    centre = xy[MOUTH_CENTRE].mean(axis=0)
    outline[JAW_SIDES] += side_inset * (centre - outline[JAW_SIDES])
    return outline


def lower_face_polygon(dst_points: np.ndarray, src_in_dst: np.ndarray, config: WeightFreeConfig) -> np.ndarray:
    """(K, 2) convex hull of both frames' lower faces (in the destination crop), grown by the
    margin: the old mouth and chin are covered as well as the new ones."""
    pts = np.concatenate([lower_face_points(dst_points, config.side_inset),
                          lower_face_points(src_in_dst, config.side_inset)]).astype(np.float32)
    hull = cv2.convexHull(pts)[:, 0].astype(np.float64)
    centre = hull.mean(axis=0)
    return centre + (hull - centre) * (1.0 + config.mask_margin)


def _roi(polygon: np.ndarray, pad: float, size: int) -> tuple[int, int, int, int]:
    x0, y0 = np.floor(polygon.min(axis=0) - pad).astype(int)
    x1, y1 = np.ceil(polygon.max(axis=0) + pad).astype(int)
    return max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)


def _shift(affine: np.ndarray, x0: int, y0: int) -> np.ndarray:
    out = np.array(affine, np.float64)
    out[:, 2] -= (x0, y0)
    return out


class Placement(NamedTuple):
    """Where a source frame's lower face goes in the destination crop."""

    similarity: np.ndarray  # (2, 3) source crop -> destination crop, fitted on the rigid ANCHORS
    src_in_dst: np.ndarray  # (478, 2) the source landmarks moved by it
    polygon: np.ndarray  # (K, 2) the region blended in: `lower_face_polygon`


def place_mouth(src_points: np.ndarray, dst_points: np.ndarray, config: WeightFreeConfig) -> Placement:
    similarity = umeyama_similarity(src_points[ANCHORS, :2], dst_points[ANCHORS, :2])
    src_in_dst = src_points[:, :2] @ similarity[:, :2].T + similarity[:, 2]
    return Placement(similarity, src_in_dst, lower_face_polygon(dst_points, src_in_dst, config))


def transfer_mouth(src_frame: np.ndarray, src_affine: np.ndarray, src_points: np.ndarray,
                   dst_frame: np.ndarray, dst_affine: np.ndarray, dst_points: np.ndarray, size: int,
                   config: WeightFreeConfig, placement: Placement | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The source frame's lower face in the destination's aligned crop, and its blend mask.

    src/dst_affine: frame -> aligned crop (2, 3); src/dst_points: (478, >=2) landmarks in their
    own crops; placement: `place_mouth` of those points, when the caller already has it. Returns
    (crop (size, size, 3) uint8, alpha (size, size) float32); the crop is only meaningful where
    alpha > 0. Both are computed on the mask's bounding box only.
    """
    similarity, _, polygon = placement or place_mouth(src_points, dst_points, config)
    sigma = max(config.feather * size, 0.5)
    x0, y0, x1, y1 = _roi(polygon, 3 * sigma, size)
    crop = np.zeros((size, size, 3), np.uint8)
    alpha = np.zeros((size, size), np.float32)
    if x1 <= x0 or y1 <= y0:
        return crop, alpha
    roi = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(src_frame, _shift(_compose(similarity, src_affine), x0, y0), roi,
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    mask = cv2.GaussianBlur(polygon_mask(polygon, (x0, y0, x1, y1)), (0, 0), sigma)
    if config.match_color:
        current = cv2.warpAffine(dst_frame, _shift(dst_affine, x0, y0), roi, flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT_101)
        warped = _gain_matched(warped, current, (mask > 0.05) & (mask < 0.6))
    crop[y0:y1, x0:x1] = warped
    alpha[y0:y1, x0:x1] = mask
    return crop, alpha


def _gain_matched(pasted: np.ndarray, current: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """`pasted` with per-channel gains that make its mean on `ring` (the skin at the mask's edge)
    match `current`'s: lighting drifts over a video, and the chosen frame may be seconds away."""
    if ring.sum() < 16:
        return pasted
    gain = (current[ring].mean(axis=0) + 1.0) / (pasted[ring].mean(axis=0) + 1.0)
    gain = np.clip(gain, 0.8, 1.25)
    return cv2.multiply(pasted, (*gain.tolist(), 1.0))  # saturating, rounded


def cross_fades(choice: np.ndarray, usable: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """At each cut (the next source frame is neither the same nor the following one), the run that
    was cut off goes on for `frames` more output frames underneath, fading out: (fade_from (N,),
    -1 where none; weight (N,) of the new run). A run cannot go on past the bank's end or onto a
    frame without landmarks; a second cut ends the fade."""
    n = len(choice)
    fade_from = np.full(n, -1, np.int64)
    weight = np.ones(n)
    for t in range(1, n):
        if choice[t] - choice[t - 1] in (0, 1):
            continue
        for k in range(frames):
            u, s = t + k, int(choice[t - 1]) + 1 + k
            if u >= n or s >= len(usable) or not usable[s] or (k and choice[u] - choice[u - 1] not in (0, 1)):
                break
            fade_from[u], weight[u] = s, (k + 1) / (frames + 1)
    return fade_from, weight


def dissolve(crop: np.ndarray, alpha: np.ndarray, old_crop: np.ndarray, old_alpha: np.ndarray,
             weight: float) -> tuple[np.ndarray, np.ndarray]:
    """The two transfers mixed, `weight` of the first: colours weighted by their masks, so where
    only one covers the face it shows unmixed."""
    out_crop, out_alpha = np.zeros_like(crop), np.zeros_like(alpha, dtype=np.float32)
    box = nonzero_box(np.maximum(alpha, old_alpha))
    if box is None:
        return out_crop, out_alpha
    x0, y0, x1, y1 = box
    roi = np.s_[y0:y1, x0:x1]  # both masks are 0 outside it
    a, b = weight * alpha[roi], (1.0 - weight) * old_alpha[roi]
    total = a + b
    mixed = (crop[roi] * a[..., None] + old_crop[roi] * b[..., None]) / np.maximum(total, 1e-6)[..., None]
    out_crop[roi] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    out_alpha[roi] = np.clip(total, 0.0, 1.0)
    return out_crop, out_alpha


# -- the model --------------------------------------------------------------------------------------

class WeightFreeLipSync:
    """The weight-free dubbing model. Holds only settings: `plan` fits to each video anew."""

    name = "weightfree"

    def __init__(self, config: WeightFreeConfig | None = None):
        self.config = config or WeightFreeConfig()

    def plan(self, points: np.ndarray, valid: np.ndarray, size: int, own: Speech | None, new: Speech,
             target_frames: np.ndarray, fps: float, bank_frames: int | None = None) -> DubPlan:
        """Which source frame's mouth each output frame shows.

        points: (S, 478, >=2) crop-pixel landmarks of the source frames (NaN rows where none),
        valid: (S,) frames with landmarks, own: the source's own speech per source frame (None
        without an audio track), new: the new speech per output frame, target_frames: (N,) source
        frame each output frame is built on. The mouths come from the first `bank_frames` source
        frames (all when None), so the cost of a long source stays bounded.
        """
        valid = np.asarray(valid, bool)
        b = len(points) if bank_frames is None else max(1, min(int(bank_frames), len(points)))
        usable = valid[:b]
        if not usable.any():
            raise ValueError("no source frame of the mouth bank has face landmarks to take a mouth from")
        raw = mouth_features(points[:b], size)
        mean, std = _standardiser(raw[usable], 1e-3)
        bank = (raw - mean) / std
        phonetic = load_phonetic_mouth() if self.config.phonetic else None
        model = MouthModel(bank, usable, own.head(b) if own is not None else None, fps, self.config, phonetic)
        targets = model.predict(new)
        weights = model.weights
        unary = weighted_sq_distances(targets, np.nan_to_num(bank), weights)
        unary += self.config.pose_weight * self._context_cost(pose_features(points, size), valid, target_frames, b)
        if self.config.expression_weight:
            unary += self.config.expression_weight * self._context_cost(expression_features(points, size), valid,
                                                                        target_frames, b)
        unary[:, ~usable] = np.inf
        choice = select_frames(unary, bank, weights, self.config)
        fade_from, fade_weight = cross_fades(choice, usable, self.config.crossfade_frames)
        floor = np.where(OPENING, self.config.min_open_spread, np.where(WIDTH, self.config.min_width_spread, 0.0))
        # the chosen frames' shapes as the reshape reads them: smoothed along the source, so the
        # mesh's frame-to-frame jitter is not "corrected" into motion the source never had
        steady = np.where(usable[:, None], bank, np.nan)
        steady = np.where(np.isfinite(steady), moving_average(np.nan_to_num(steady), self.config.smooth_frames), np.nan)
        return DubPlan(choice, targets, model.fit, model.fit_r, fade_from, fade_weight,
                       shapes=steady, std=std, scale=np.maximum(std, floor))

    @staticmethod
    def _context_cost(features: np.ndarray, valid: np.ndarray, target_frames: np.ndarray,
                      bank_frames: int) -> np.ndarray:
        """(N, B) mean squared distance (in the bank's std units) between the features (head pose,
        expression) of each output frame's own source frame and of every bank frame: the mouth
        pasted in must fit the face around it. 0 where the output frame has no landmarks."""
        usable = features[:bank_frames][valid[:bank_frames]]
        _, std = _standardiser(usable, 1e-3)
        features = np.nan_to_num((features - np.nanmean(usable, axis=0)) / std)
        cost = weighted_sq_distances(features[target_frames], features[:bank_frames],
                                     np.full(features.shape[1], 1.0 / features.shape[1]))
        cost[~valid[target_frames]] = 0.0
        return cost

    @staticmethod
    def mouth_sources(plan: DubPlan) -> np.ndarray:
        """The source frames whose mouths the plan shows, increasing: `render` needs their crops."""
        faded = plan.fade_from[plan.fade_from >= 0] if plan.fade_from is not None else np.zeros(0, int)
        return np.unique(np.concatenate([plan.choice, faded]))

    def render(self, plan: DubPlan, t: int, mouth_crops: Mapping[int, np.ndarray], points: np.ndarray,
               frame: np.ndarray, affine: np.ndarray, target_frame: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(crop, alpha) of output frame `t`, built on source frame `target_frame` (`frame`, with
        its frame -> crop `affine`), see `transfer_mouth`, the mouth then reshaped the rest of the
        way to the plan's target. mouth_crops: the aligned crop of every frame in
        `mouth_sources(plan)`; `points` index source frames."""
        crop, alpha = self._mouth(plan, t, int(plan.choice[t]), mouth_crops, points, frame, affine, target_frame, size)
        old = int(plan.fade_from[t]) if plan.fade_from is not None else -1
        if old < 0:
            return crop, alpha
        old_crop, old_alpha = self._mouth(plan, t, old, mouth_crops, points, frame, affine, target_frame, size)
        return dissolve(crop, alpha, old_crop, old_alpha, float(plan.fade_weight[t]))

    def _mouth(self, plan: DubPlan, t: int, s: int, mouth_crops: Mapping[int, np.ndarray], points: np.ndarray,
               frame: np.ndarray, affine: np.ndarray, target_frame: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        dst = points[target_frame]
        placement = place_mouth(points[s], dst, self.config)
        crop, alpha = transfer_mouth(mouth_crops[s], _IDENTITY, points[s], frame, affine, dst, size, self.config,
                                     placement)
        if self.config.reshape <= 0 or plan.shapes is None or not alpha.any():
            return crop, alpha
        # what the chosen mouth lacks of the target shape, in this crop's pixels
        delta = (plan.targets[t] * plan.scale - plan.shapes[s] * plan.std) * size * self.config.reshape
        if not np.isfinite(delta[[INNER_OPEN, OUTER_WIDTH]]).all():
            return crop, alpha
        crop, _ = reshape_mouth(crop, placement.src_in_dst, placement.polygon, float(delta[OUTER_WIDTH]),
                                float(delta[INNER_OPEN]), self.config.shape)
        return crop, alpha


_IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


__all__ = [
    "FEATURE_NAMES",
    "DubPlan",
    "MouthModel",
    "Speech",
    "WeightFreeConfig",
    "WeightFreeLipSync",
    "fit_ridge",
    "loudness_openness",
    "sounding",
    "mouth_features",
    "pose_features",
    "select_frames",
    "speech_design",
    "transfer_mouth",
]

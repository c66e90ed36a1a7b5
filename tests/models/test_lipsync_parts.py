"""Parts of the weight-free lip sync that other generators reuse: the speaker-independent
speech -> mouth model (shipped, and its fitting script) and the mouth reshape warp."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from facefab.audio.features import load_vad
from facefab.face.mesh import largest_face_landmarks
from facefab.media import read_audio, read_frames
from facefab.models.lipsync import fit_phonetic
from facefab.models.lipsync.mouth_shape import lip_gap, lip_loops, reshape_mouth
from facefab.models.lipsync.phonetic import PhoneticMouth, load_phonetic_mouth
from facefab.models.lipsync.speech import as_speech, speech_features
from facefab.models.lipsync.weightfree import FEATURE_NAMES, LOWER_FACE


def test_the_shipped_model_predicts_every_mouth_feature_and_says_how_well_it_held_out(shared_data, tmp_path):
    model = load_phonetic_mouth()
    assert model.targets == FEATURE_NAMES
    held = model.evaluation["held_out_r"]
    assert set(model.evaluation["held_out_r_per_speaker"]) == set(model.evaluation["fitted_on"])
    assert held["outer_width"] >= 0.3  # what the dub trusts it for
    audio = read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), end=4.0)
    arrays = speech_features(audio, 25.0, 100, load_vad(), 0.5)
    speech = as_speech({f"s_{k}": v for k, v in arrays.items()}, "s", 25.0, 8)
    z = model.predict(speech, 25.0)
    assert z.shape == (100, len(FEATURE_NAMES)) and np.isfinite(z).all()
    assert z[:, FEATURE_NAMES.index("outer_width")].std() > 0.2  # it moves with the sounds
    again = PhoneticMouth.from_pretrained(model.save_pretrained(tmp_path))
    assert np.allclose(again.predict(speech, 25.0), z, atol=1e-4) and again.evaluation == model.evaluation


@pytest.mark.slow
def test_the_fitting_script_holds_each_speaker_out(shared_data, tmp_path, capsys):
    videos = [str(shared_data / "videos" / f"drive_{name}.mp4") for name in ("d6", "d10")]
    assert fit_phonetic.main([*videos, "--out", str(tmp_path / "m.json")]) == 0
    model = PhoneticMouth.from_pretrained(tmp_path / "m.json")
    per_speaker = model.evaluation["held_out_r_per_speaker"]
    assert set(per_speaker) == {"drive_d6", "drive_d10"}
    # a fit on one speaker predicts the other's mouth width from the sounds alone (the bundled
    # clips are 10 s and 7 s; on the full videos the shipped file records 0.48 and 0.74)
    widths = {name: (scores["outer_width"] + scores["inner_width"]) / 2 for name, scores in per_speaker.items()}
    assert all(r > 0.1 for r in widths.values()), per_speaker
    assert "held out drive_d6" in capsys.readouterr().out


@pytest.fixture(scope="module")
def portrait(shared_data):
    frames = read_frames(str(shared_data / "videos" / "talk_yongen.mp4"), end=0.2)[:1]
    points = largest_face_landmarks(frames)[0]
    assert np.isfinite(points).all()
    return frames[0], points


def _still_ring(points: np.ndarray) -> np.ndarray:
    xy = points[LOWER_FACE, :2].astype(np.float64)
    return xy.mean(axis=0) + (xy - xy.mean(axis=0)) * 1.1


def test_reshape_opens_and_widens_the_mouth_as_asked_and_nothing_outside_moves(portrait):
    image, points = portrait
    xy = points[:, :2].astype(np.float64)
    width = float(np.linalg.norm(xy[61] - xy[291]))
    gap = lip_gap(xy)
    ring = _still_ring(points)
    opened, moved = reshape_mouth(image, points, ring, 0.0, 0.3 * width)
    widened, _ = reshape_mouth(image, points, ring, 0.15 * width, 0.0)
    seen = largest_face_landmarks(np.stack([opened, widened]))
    assert abs(lip_gap(seen[0, :, :2]) - (gap + 0.3 * width)) < 0.1 * width  # the mesh sees the new mouth
    seen_width = float(np.linalg.norm(seen[1, 61, :2] - seen[1, 291, :2]))
    assert abs(seen_width - 1.15 * width) < 0.06 * width
    # the new gap is a dark mouth cavity, not stretched lip
    _, inner = lip_loops()
    cavity = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(cavity, [np.round(moved[inner]).astype(np.int32)], 1)
    cavity = cv2.erode(cavity, np.ones((3, 3), np.uint8)).astype(bool)
    assert cavity.sum() > 20 and opened[cavity].mean() < 0.6 * image[cavity].mean()
    # ... with the upper front teeth under the upper lip: light, the mouth's depth below them dark
    top, bottom = moved[13], moved[14]
    teeth_at = np.round(top + 0.06 * width * (bottom - top) / np.linalg.norm(bottom - top)).astype(int)
    deep_at = np.round(bottom - 0.08 * width * (bottom - top) / np.linalg.norm(bottom - top)).astype(int)
    teeth = opened[teeth_at[1] - 1:teeth_at[1] + 2, teeth_at[0] - 2:teeth_at[0] + 3].mean()
    deep = opened[deep_at[1] - 1:deep_at[1] + 2, deep_at[0] - 2:deep_at[0] + 3].mean()
    assert teeth > 2.5 * deep and teeth > 0.9 * image[cavity].mean(), (teeth, deep)
    # outside the held ring's box nothing changed
    lo, hi = np.floor(ring.min(axis=0)).astype(int) - 3, np.ceil(ring.max(axis=0)).astype(int) + 3
    outside = np.ones(image.shape[:2], bool)
    outside[max(lo[1], 0):hi[1], max(lo[0], 0):hi[0]] = False
    assert np.array_equal(opened[outside], image[outside]) and np.array_equal(widened[outside], image[outside])


def test_reshape_clips_to_a_plausible_mouth_and_does_nothing_for_no_change(portrait):
    image, points = portrait
    xy = points[:, :2].astype(np.float64)
    width = float(np.linalg.norm(xy[61] - xy[291]))
    same, _ = reshape_mouth(image, points, _still_ring(points), 0.0, 0.0)
    assert same is image
    _, moved = reshape_mouth(image, points, _still_ring(points), 5 * width, 5 * width)
    assert np.linalg.norm(moved[61] - moved[291]) <= 1.25 * width + 1e-6  # at most 25% wider
    assert lip_gap(moved) <= 0.6 * width + 1e-6  # lips part at most 60% of the width

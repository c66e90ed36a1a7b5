"""The weight-free talking photo (models/portrait): a shipped portrait and shipped speech."""

import cv2
import numpy as np
import pytest

from facefab.audio.features import load_vad
from facefab.face.mesh import largest_face_landmarks
from facefab.face.parsing import mouth_open_ratio
from facefab.face.scores import av_sync_score
from facefab.media import read_audio
from facefab.models.lipsync.speech import as_speech, speech_features
from facefab.models.portrait.weightfree import EYES, WeightFreePortrait

FPS = 25.0


@pytest.fixture(scope="module")
def animated(shared_data):
    image = cv2.cvtColor(cv2.imread(str(shared_data / "portraits" / "lp_s9.jpg")), cv2.COLOR_BGR2RGB)
    scale = 640 / max(image.shape[:2])
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    points = largest_face_landmarks(image[None])[0]
    assert np.isfinite(points).all()
    audio = read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), sample_rate=16000, end=6.5)
    n = int(len(audio) / 16000 * FPS)
    arrays = speech_features(audio, FPS, n, load_vad(), 0.5)
    speech = as_speech({f"new_{k}": v for k, v in arrays.items()}, "new", FPS, 8)
    model = WeightFreePortrait()
    plan = model.plan(points, speech, FPS, image.shape[:2])
    frames = np.stack([model.render(plan, t, image, points) for t in range(n)])
    again = np.stack([model.render(plan, t, image, points) for t in (0, n // 2, n - 1)])
    return image, points, speech, plan, frames, again


def test_the_mouth_follows_the_speech_and_a_still_photo_does_not(animated):
    _image, points, speech, plan, frames, _ = animated
    seen = largest_face_landmarks(frames)
    sync, lag = av_sync_score(mouth_open_ratio(seen), speech.rms)
    still = mouth_open_ratio(np.repeat(points[None], len(frames), axis=0))
    assert sync >= 0.3 and abs(lag) <= 3, (sync, lag)
    still_sync = av_sync_score(still, speech.rms)[0]
    assert np.isnan(still_sync) or still_sync < 0.1
    # silence leaves the portrait's own mouth: the quietest second is the least open
    opening = mouth_open_ratio(seen)
    assert np.nanmean(opening[plan.open_px < 0.5]) < np.nanmean(opening[plan.open_px > np.percentile(plan.open_px, 75)])


def test_blinks_come_every_few_seconds_and_close_the_eyes(animated):
    _, _points, _, plan, frames, _ = animated
    starts = np.flatnonzero(np.diff((plan.blink > 0.5).astype(int)) == 1)
    assert len(starts) >= 1 and np.all(np.diff(starts) <= 6 * FPS)
    seen = largest_face_landmarks(frames)
    lid_gap = np.mean([np.linalg.norm(seen[:, top, :2] - seen[:, bottom, :2], axis=-1)
                       for _, _, top, bottom in EYES], axis=0)
    closed = plan.blink > 0.9
    assert closed.any() and np.nanmean(lid_gap[closed]) < 0.7 * np.nanmean(lid_gap[plan.blink == 0])


def test_the_face_stays_the_reference_and_frames_are_reproducible(animated):
    _image, points, _, _plan, frames, again = animated
    seen = largest_face_landmarks(frames)[..., :2]
    # outside the mouth and eyes the landmarks stay within the sway of the reference's
    rigid = np.array([1, 4, 10, 152, 234, 454, 168, 6])
    drift = np.linalg.norm(seen[:, rigid] - points[None, rigid, :2], axis=-1)
    face = float(np.linalg.norm(points[234, :2] - points[454, :2]))
    assert np.nanmax(drift) < 0.06 * face
    n = len(frames)
    assert np.array_equal(again, frames[[0, n // 2, n - 1]])

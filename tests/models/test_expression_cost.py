"""The weight-free dub can weigh the upper face's expression when it picks a mouth."""
from __future__ import annotations

import numpy as np

from facefab.face.mesh import largest_face_landmarks
from facefab.media import read_frames
from facefab.models.lipsync.weightfree import WeightFreeLipSync, expression_features


def test_expression_cost_prefers_frames_whose_upper_face_matches(shared_data):
    frames = read_frames(str(shared_data / "videos" / "drive_d10.mp4"), end=3.0)
    points = largest_face_landmarks(frames)[..., :2]
    valid = np.isfinite(points).all(axis=(1, 2))
    features = expression_features(points, 512.0)
    assert features.shape == (len(frames), 6) and np.isfinite(features[valid]).all()
    assert features[valid].std(axis=0).min() > 0  # the face's expression does change in this clip
    targets = np.flatnonzero(valid)[::10]
    cost = WeightFreeLipSync._context_cost(features, valid, targets, len(frames))
    # each output frame's own source frame is the cheapest match for its own expression
    assert np.array_equal(np.argmin(np.where(valid, cost, np.inf), axis=1), targets)
    far = np.abs(features[targets][:, None, :] - features[None, :, :]).sum(-1)
    assert np.corrcoef(far[:, valid].ravel(), cost[:, valid].ravel())[0, 1] > 0.8

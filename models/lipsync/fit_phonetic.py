"""Fit the phonetic mouth model on talking videos whose audio is the speaker's own speech, in sync.

    python -m facefab.models.lipsync.fit_phonetic VIDEO [VIDEO ...] [--out phonetic_mouth.json]

Each video is one speaker. Per frame: the largest face's mesh gives the mouth features
(`weightfree.mouth_features`, divided by the eye-corner distance so head distance drops out), the
audio the speech features (`speech.speech_features`). Before the final fit on all videos, each
video is held out once and predicted by a fit on the others: the held-out Pearson r per mouth
feature (over voiced frames) is what the file records as `evaluation.held_out_r` (the mean over
speakers), so no score is ever reported on a speaker the model saw. Without arguments it fits what
the shipped file was fitted on: drive_d6 and drive_d10 of the shared media (LivePortrait's example
driving videos, the two whose audio is their own speech), from $FACEFAB_SHARED_DATA or
../shared/data.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from facefab.face.mesh import largest_face_landmarks
from facefab.face.scores import finite_pearson

from .phonetic import DEFAULT_FILE, PhoneticMouth, PhoneticMouthConfig
from .speech import Speech, as_speech, sounding, speech_features
from .weightfree import FEATURE_NAMES, WeightFreeConfig, mouth_features

EYE_CORNERS = (33, 263)
DEFAULT_VIDEOS = ("videos/drive_d6.mp4", "videos/drive_d10.mp4")


def _shared_data() -> Path:
    if os.environ.get("FACEFAB_SHARED_DATA"):
        return Path(os.environ["FACEFAB_SHARED_DATA"])
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def recording(path: str) -> tuple[Speech, float, np.ndarray]:
    """(speech, fps, mouth features (T, F) in eye-corner distances, NaN without a face) of a video."""
    from facefab.audio.features import SAMPLE_RATE, load_vad
    from facefab.media import probe, read_audio, read_frames

    fps = probe(path).fps
    frames = read_frames(path)
    points = largest_face_landmarks(frames)
    eyes = np.linalg.norm(points[:, EYE_CORNERS[0], :2] - points[:, EYE_CORNERS[1], :2], axis=-1)
    shapes = mouth_features(points, 1.0) / eyes[:, None]
    arrays = speech_features(read_audio(path, sample_rate=SAMPLE_RATE), fps, len(frames), load_vad(), 0.5)
    speech = as_speech({f"s_{k}": v for k, v in arrays.items()}, "s", fps, WeightFreeConfig().context)
    return speech, fps, shapes


def leave_one_out(recordings: dict[str, tuple[Speech, float, np.ndarray]],
                  config: PhoneticMouthConfig) -> dict[str, dict[str, float]]:
    """Per held-out video, the r per mouth feature over its voiced frames of a fit on the others."""
    scores = {}
    for held, (speech, fps, shapes) in recordings.items():
        rest = [v for k, v in recordings.items() if k != held]
        model = PhoneticMouth(config).fit([r[0] for r in rest], [r[1] for r in rest], [r[2] for r in rest],
                                          FEATURE_NAMES)
        voiced = sounding(speech)
        pred = model.predict(speech, fps)
        scores[held] = {name: round(finite_pearson(pred[voiced, k], shapes[voiced, k]), 3)
                        for k, name in enumerate(FEATURE_NAMES)}
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="*", help="talking videos, one speaker each, audio in sync")
    parser.add_argument("--out", default=str(DEFAULT_FILE), help="where to write the fitted model (JSON)")
    args = parser.parse_args(argv)
    videos = args.videos or [str(_shared_data() / v) for v in DEFAULT_VIDEOS]
    if len(videos) < 2:
        parser.error("at least two videos (speakers) are needed to hold one out")
    missing = [v for v in videos if not Path(v).exists()]
    if missing:
        parser.error(f"not found: {', '.join(missing)}")
    recordings = {Path(v).stem: recording(v) for v in videos}
    config = PhoneticMouthConfig()
    held = leave_one_out(recordings, config)
    for name, scores in held.items():
        print(f"held out {name}: " + ", ".join(f"{k} r={v:.2f}" for k, v in scores.items()))
    model = PhoneticMouth(config).fit(*map(list, zip(*recordings.values())), FEATURE_NAMES)
    model.evaluation = {
        "fitted_on": sorted(recordings),
        "held_out_r": {k: round(float(np.nanmean([s[k] for s in held.values()])), 3) for k in FEATURE_NAMES},
        "held_out_r_per_speaker": held,
    }
    print(f"wrote {model.save_pretrained(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Formant tracks: the resonances of a synthetic vowel, and real speech."""
from __future__ import annotations

import numpy as np

from facefab.audio.features import SAMPLE_RATE, frame_voice_activity, load_vad
from facefab.audio.formants import formant_tracks
from facefab.media import read_audio


def _vowel(f1: float, f2: float, seconds: float = 1.0, pitch: float = 120.0) -> np.ndarray:
    """A glottal pulse train through two resonators at f1 and f2 (a vowel, as the source-filter
    model of speech has it)."""
    n = int(seconds * SAMPLE_RATE)
    x = np.zeros(n)
    x[:: int(SAMPLE_RATE / pitch)] = 1.0
    for f, bandwidth in ((f1, 80.0), (f2, 100.0)):
        r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
        a1, a2 = 2 * r * np.cos(2 * np.pi * f / SAMPLE_RATE), -r * r
        y = np.zeros(n)
        for i in range(n):
            y[i] = x[i] + a1 * (y[i - 1] if i else 0.0) + a2 * (y[i - 2] if i > 1 else 0.0)
        x = y
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def test_formants_of_synthetic_vowels_are_found():
    found = {}
    for vowel, f1, f2 in (("i", 300.0, 2300.0), ("a", 750.0, 1200.0), ("u", 350.0, 800.0)):
        tracks = formant_tracks(_vowel(f1, f2), 30.0, 30)
        assert np.isfinite(tracks[2:28]).all()
        found[vowel] = np.median(tracks[5:25], axis=0)
        # F2 within 10%; a low F1 reads high (pitch harmonics pull the all-pole fit): within 30%
        assert abs(found[vowel][1] - f2) < 0.1 * f2 and 0.95 * f1 <= found[vowel][0] < 1.3 * f1, (vowel, found[vowel])
    # what the mouth model reads from them: /a/ opens (highest F1), /i/ spreads, /u/ rounds (F2)
    assert found["a"][0] > found["i"][0] + 200 and found["a"][0] > found["u"][0] + 200
    assert found["i"][1] > found["a"][1] > found["u"][1]


def test_silence_has_no_formants_and_speech_has_them(shared_data):
    silent = formant_tracks(np.zeros(SAMPLE_RATE, np.float32), 25.0, 25)
    assert silent.shape == (25, 2) and np.isnan(silent).all()
    speech = read_audio(str(shared_data / "audio" / "speech_hallo1.wav"), end=4.0)
    tracks = formant_tracks(speech, 25.0, 100)
    voiced = frame_voice_activity(speech, load_vad(), 25.0, 100)
    found = np.isfinite(tracks).all(axis=1)
    assert found[voiced].mean() > 0.6  # consonants and pauses inside speech have none
    assert (tracks[found, 0] < tracks[found, 1]).all()
    assert 250 < np.median(tracks[found & voiced, 0]) < 1000 < np.median(tracks[found & voiced, 1]) < 2500

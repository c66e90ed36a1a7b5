"""Pure audio algorithms on synthetic signals: framing to video frames, mel, RMS, mel windows."""

from __future__ import annotations

import numpy as np
import pytest

from facefab.audio.features import (
    SAMPLE_RATE,
    MelSettings,
    fit_audio,
    frame_fraction,
    frame_rms,
    frame_sample_bounds,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    mel_windows,
)


def test_frame_bounds_cover_the_audio_exactly():
    bounds = frame_sample_bounds(25, 25.0)
    assert bounds[0] == 0 and bounds[-1] == SAMPLE_RATE and np.all(np.diff(bounds) == 640)
    odd = frame_sample_bounds(30, 29.97)
    assert np.abs(np.diff(odd) - SAMPLE_RATE / 29.97).max() <= 1


def test_fit_audio_cuts_or_zero_pads():
    audio = np.ones(10, np.float32)
    assert fit_audio(audio, 4).tolist() == [1, 1, 1, 1]
    assert fit_audio(audio, 12).tolist() == [1] * 10 + [0, 0]


def test_frame_rms_and_fraction_follow_each_frames_interval():
    fps, n = 25.0, 4
    audio = np.concatenate([np.zeros(640), 0.5 * np.ones(640), -0.25 * np.ones(640), np.zeros(640)])
    np.testing.assert_allclose(frame_rms(audio, fps, n), [0.0, 0.5, 0.25, 0.0], atol=1e-7)
    np.testing.assert_allclose(frame_fraction(audio != 0, fps, n), [0.0, 1.0, 1.0, 0.0])


def test_mel_scale_round_trips_and_filters_cover_the_band():
    hz = np.array([0.0, 440.0, 1000.0, 7999.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, atol=1e-6)
    bank = mel_filterbank(400, 80, SAMPLE_RATE, 0.0, 8000.0)
    assert bank.shape == (80, 201) and bank.min() >= 0 and bank.max() <= 1
    assert (bank.max(axis=1) > 0.2).all()  # every filter touches the FFT grid (low ones are narrow)
    assert (bank.sum(axis=0)[2:-2] > 0).all()  # and together they cover the band
    peaks = bank.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0)  # filters ordered by frequency


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_log_mel_of_a_tone_peaks_in_the_tones_band(freq):
    settings = MelSettings()
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    mel = log_mel((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), settings)
    assert mel.shape == (SAMPLE_RATE // settings.hop_length + 1, settings.n_mels)
    centres = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), settings.n_mels + 2))[1:-1]
    peak = int(np.median(mel[5:-5].argmax(axis=1)))
    assert abs(centres[peak] - freq) < 0.1 * freq + 60
    silence = log_mel(np.zeros(SAMPLE_RATE, np.float32), settings)
    np.testing.assert_allclose(silence, np.log(settings.log_floor), rtol=1e-6)


def test_mel_windows_are_centred_on_each_video_frame_and_clamped():
    windows = mel_windows(n_frames=50, fps=25.0, n_mel_frames=201, context=2)
    assert windows.shape == (50, 5)
    assert windows[10].tolist() == [40, 41, 42, 43, 44]  # frame 10 is centred at 0.42 s = mel frame 42
    assert windows[0].min() == 0 and windows[-1].max() <= 200
    assert (mel_windows(3, 25.0, 4, 5) <= 3).all()

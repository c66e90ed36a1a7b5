"""Formant tracks by linear prediction: the resonances of the vocal tract, which the mouth shapes.

F1 rises as the jaw opens (/a/ high, /i/ /u/ low); F2 rises as the lips spread and the tongue moves
forward (/i/ high) and falls as the lips round (/u/ /o/ low). Unlike a spectrum, they say little
about the microphone, so a mapping from them to mouth shape carries over between recordings once
each recording's own range is normalised out.
"""

from __future__ import annotations

import numpy as np

from .features import SAMPLE_RATE, frame_sample_bounds


def lpc(frames: np.ndarray, order: int) -> np.ndarray:
    """(T, order+1) linear-prediction polynomials (a[0] = 1) of windowed frames (T, L), by the
    autocorrelation method (Levinson-Durbin, vectorised over frames). Silent frames give NaN."""
    frames = np.asarray(frames, np.float64)
    spectrum = np.fft.rfft(frames, n=2 * frames.shape[1], axis=1)
    r = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, : order + 1]
    t = len(frames)
    a = np.zeros((t, order + 1))
    a[:, 0] = 1.0
    silent = r[:, 0] <= 1e-10
    err = np.where(silent, 1.0, r[:, 0])
    for i in range(1, order + 1):
        k = -(r[:, i] + (a[:, 1:i] * r[:, i - 1:0:-1]).sum(axis=1)) / err
        a[:, 1:i] = a[:, 1:i] + k[:, None] * a[:, i - 1:0:-1]
        a[:, i] = k
        err = np.maximum(err * (1.0 - k * k), 1e-12)
    a[silent] = np.nan
    return a


def formants_of(a: np.ndarray, sample_rate: int, count: int = 2, min_hz: float = 200.0,
                max_hz: float = 5000.0, max_bandwidth_hz: float = 500.0) -> np.ndarray:
    """(T, count) lowest resonance frequencies in Hz of LPC polynomials (T, p+1): the roots in the
    upper half plane with a narrow enough bandwidth; NaN where fewer are found."""
    t, p = len(a), a.shape[1] - 1
    out = np.full((t, count), np.nan)
    ok = np.isfinite(a).all(axis=1)
    if not ok.any():
        return out
    companion = np.zeros((int(ok.sum()), p, p))
    companion[:, 0, :] = -a[ok, 1:]
    companion[:, np.arange(1, p), np.arange(p - 1)] = 1.0
    roots = np.linalg.eigvals(companion)
    hz = np.angle(roots) * sample_rate / (2 * np.pi)
    bandwidth = -np.log(np.maximum(np.abs(roots), 1e-12)) * sample_rate / np.pi
    keep = (roots.imag > 0) & (hz > min_hz) & (hz < max_hz) & (bandwidth < max_bandwidth_hz)
    hz = np.sort(np.where(keep, hz, np.inf), axis=1)[:, :count]
    out[ok] = np.where(np.isfinite(hz), hz, np.nan)
    return out


def formant_tracks(audio: np.ndarray, fps: float, n_frames: int, sample_rate: int = SAMPLE_RATE,
                   count: int = 2, order: int = 14, window_s: float = 0.03) -> np.ndarray:
    """(n_frames, count) float32 formant frequencies (Hz) of mono audio around each video frame's
    centre; NaN where the audio is silent or has no clear resonance (e.g. /s/, breath)."""
    audio = np.asarray(audio, np.float64).reshape(-1)
    emphasised = np.append(audio[:1], audio[1:] - 0.97 * audio[:-1])  # flatten the glottal tilt
    half = int(window_s * sample_rate / 2)
    bounds = frame_sample_bounds(n_frames, fps, sample_rate)
    centres = ((bounds[:-1] + bounds[1:]) // 2).astype(np.int64)
    padded = np.pad(emphasised, half)
    frames = padded[centres[:, None] + np.arange(2 * half)[None, :]] * np.hamming(2 * half)
    return formants_of(lpc(frames, order), sample_rate, count).astype(np.float32)

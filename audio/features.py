"""Audio features on arrays, aligned to video frames: framing, log-mel and per-frame mel windows,
RMS, silero voice activity.

Time convention (shared by every per-frame audio feature): video frame t covers [t/fps, (t+1)/fps)
seconds after the start of the audio window; its centre is (t + 0.5)/fps. Per-frame RMS and voice
activity average over that interval; the mel window of frame t is centred on the mel frame nearest
to that centre.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NO_AUDIO_MESSAGE = "video has no audio track"


# -- framing ------------------------------------------------------------------------------------

def frame_sample_bounds(n_frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(T+1,) sample index where each video frame's audio interval starts (last = end)."""
    return np.round(np.arange(n_frames + 1) * sample_rate / fps).astype(np.int64)


def fit_audio(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Cut or zero-pad mono audio to exactly `n_samples` (decoders end a few samples early/late)."""
    audio = np.asarray(audio, np.float32)
    if len(audio) >= n_samples:
        return audio[:n_samples]
    return np.concatenate([audio, np.zeros(n_samples - len(audio), np.float32)])





def frame_rms(audio: np.ndarray, fps: float, n_frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(T,) RMS energy of each video frame's audio interval."""
    bounds = np.minimum(frame_sample_bounds(n_frames, fps, sample_rate), len(audio))
    energy = np.concatenate([[0.0], np.cumsum(np.asarray(audio, np.float64) ** 2)])
    counts = np.maximum(np.diff(bounds), 1)
    return np.sqrt((energy[bounds[1:]] - energy[bounds[:-1]]) / counts).astype(np.float32)


def frame_fraction(sample_mask: np.ndarray, fps: float, n_frames: int,
                   sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(T,) fraction of each video frame's samples where `sample_mask` is set."""
    bounds = np.minimum(frame_sample_bounds(n_frames, fps, sample_rate), len(sample_mask))
    hits = np.concatenate([[0], np.cumsum(sample_mask.astype(np.int64))])
    return (hits[bounds[1:]] - hits[bounds[:-1]]) / np.maximum(np.diff(bounds), 1)


# -- log-mel -----------------------------------------------------------------------------------

def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangular HTK-scale filters, unnormalised (torchaudio's default)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    bin_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)


@dataclass
class MelSettings:
    n_mels: int = 80
    window_ms: float = 25.0
    hop_ms: float = 10.0
    fmin: float = 0.0
    fmax: float | None = 8000.0
    log_floor: float = 1e-5  # mel power floor before the log: digital silence maps to log(floor)

    @property
    def win_length(self) -> int:
        return round(SAMPLE_RATE * self.window_ms / 1000)

    @property
    def hop_length(self) -> int:
        return round(SAMPLE_RATE * self.hop_ms / 1000)


def log_mel(audio: np.ndarray, settings: MelSettings = MelSettings()) -> np.ndarray:
    """(n_mel_frames, n_mels) float32 natural-log mel power; frame m is centred at m*hop."""
    import torch

    win = settings.win_length
    x = torch.from_numpy(np.ascontiguousarray(audio, np.float32))
    if len(x) <= win // 2:  # reflect padding needs more samples than half a window
        x = torch.nn.functional.pad(x, (0, win // 2 + 1 - len(x)))
    spec = torch.stft(x, n_fft=win, hop_length=settings.hop_length, win_length=win,
                      window=torch.hann_window(win), center=True, pad_mode="reflect",
                      return_complex=True)
    power = spec.abs() ** 2  # (freq, frames)
    bank = torch.from_numpy(mel_filterbank(win, settings.n_mels, SAMPLE_RATE, settings.fmin, settings.fmax))
    mel = bank @ power
    return torch.log(mel.clamp_min(settings.log_floor)).T.contiguous().numpy()


def mel_windows(n_frames: int, fps: float, n_mel_frames: int, context: int,
                settings: MelSettings = MelSettings()) -> np.ndarray:
    """(T, 2*context+1) int32 mel frame indices centred on each video frame (edge-clamped)."""
    centre_s = (np.arange(n_frames) + 0.5) / fps
    centre = np.round(centre_s * SAMPLE_RATE / settings.hop_length).astype(np.int64)
    idx = centre[:, None] + np.arange(-context, context + 1)[None, :]
    return np.clip(idx, 0, n_mel_frames - 1).astype(np.int32)


# -- voice activity ------------------------------------------------------------------------------

def load_vad():
    from silero_vad import load_silero_vad

    return load_silero_vad()


def speech_sample_mask(audio: np.ndarray, vad_model, threshold: float = 0.5,
                       min_speech_ms: int = 250, min_silence_ms: int = 100) -> np.ndarray:
    """(N,) bool: samples inside silero-vad speech segments."""
    import torch
    from silero_vad import get_speech_timestamps

    mask = np.zeros(len(audio), bool)
    if not np.any(audio):
        return mask
    stamps = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(audio, np.float32)), vad_model,
                                   sampling_rate=SAMPLE_RATE, threshold=threshold,
                                   min_speech_duration_ms=min_speech_ms, min_silence_duration_ms=min_silence_ms)
    for seg in stamps:
        mask[seg["start"]:seg["end"]] = True
    return mask


def frame_voice_activity(audio: np.ndarray, vad_model, fps: float, n_frames: int,
                         threshold: float = 0.5) -> np.ndarray:
    """(T,) bool: video frames whose audio interval is at least half speech."""
    return frame_fraction(speech_sample_mask(audio, vad_model, threshold), fps, n_frames) >= 0.5

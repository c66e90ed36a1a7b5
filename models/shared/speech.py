"""Speech features per video frame for the audio-driven generators (log-mel, AudioFeatures' defaults)."""

from __future__ import annotations

import numpy as np


def audio_mel_windows(audio: np.ndarray, n_frames: int, fps: float, mel_window: int) -> np.ndarray:
    """(T, mel_window, 80) log-mel windows of 16 kHz mono audio for T video frames (AudioFeatures defaults)."""
    from facefab.audio.features import fit_audio, frame_sample_bounds, log_mel, mel_windows

    audio = fit_audio(audio, int(frame_sample_bounds(n_frames, fps)[-1]))
    mel = log_mel(audio)
    return mel[mel_windows(n_frames, fps, len(mel), (mel_window - 1) // 2)]


def mel_per_frame(fps: float) -> int:
    """Mel frames (10 ms hop) per video frame, at least 1: 4 at 25 fps."""
    from facefab.audio.features import SAMPLE_RATE, MelSettings

    return max(1, round(SAMPLE_RATE / MelSettings().hop_length / fps))


def speech_windows(audio: np.ndarray, fps: float, num_frames: int, seq_len: int, blocks: int | None = None) -> np.ndarray:
    """(T, seq_len, blocks, 80) float32: for each video frame, the log-mel of the `seq_len` video frames
    centred on it, `blocks` mel frames each (default: the mel frames of one video frame) — the
    (frames, seq_len, blocks, channels) layout Hallo's AudioProjModel takes from wav2vec2 layers."""
    blocks = blocks or mel_per_frame(fps)
    mel = audio_mel_windows(audio, num_frames, fps, seq_len * blocks + 1)[:, : seq_len * blocks]
    return np.ascontiguousarray(mel.reshape(num_frames, seq_len, blocks, mel.shape[-1]), np.float32)


def frame_windows(features: np.ndarray, seq_len: int) -> np.ndarray:
    """(T, ...) per-frame features -> (T, seq_len, ...): each frame with its seq_len // 2 neighbours on
    either side (edge frames repeated)."""
    t = len(features)
    idx = np.clip(np.arange(t)[:, None] + np.arange(seq_len)[None, :] - seq_len // 2, 0, t - 1)
    return features[idx]


__all__ = ["audio_mel_windows", "frame_windows", "mel_per_frame", "speech_windows"]

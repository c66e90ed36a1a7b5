"""Speech as the lip-sync models see it: per video frame, log-mel windows, loudness, voice activity
and formants, and the loudness-only mouth opening every model falls back on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass
class Speech:
    """Audio features per video frame."""

    mel_windows: np.ndarray  # (T, W, n_mels) log-mel around each frame's centre
    rms: np.ndarray  # (T,)
    vad: np.ndarray  # (T,) bool: speech
    formants: np.ndarray | None = None  # (T, 2) F1, F2 in Hz, NaN where none (audio.formants)

    def __len__(self) -> int:
        return len(self.rms)

    def head(self, n: int) -> Speech:
        """The features of the first n frames."""
        formants = self.formants[:n] if self.formants is not None else None
        return Speech(self.mel_windows[:n], self.rms[:n], self.vad[:n], formants)


def speech_design(speech: Speech, bands: int = 20, chunks: int = 3) -> np.ndarray:
    """(T, chunks*bands + 1) regression inputs: the mel window pooled into `chunks` time slices x
    `bands` frequency bands, plus log energy, normalised per recording over its speech frames
    (cepstral-mean style), so a different voice or microphone lands on the same scale."""
    mel = np.asarray(speech.mel_windows, np.float64)
    t = len(mel)
    pooled = np.stack([part.mean(axis=1) for part in np.array_split(mel, chunks, axis=1)], axis=1)
    pooled = np.stack([part.mean(axis=2) for part in np.array_split(pooled, bands, axis=2)], axis=2)
    x = np.concatenate([pooled.reshape(t, -1), np.log(speech.rms.astype(np.float64) + 1e-5)[:, None]], axis=1)
    ref = x[speech.vad] if speech.vad.sum() >= 2 else x
    return (x - ref.mean(axis=0)) / np.maximum(ref.std(axis=0), 1e-3)


def _db(speech: Speech) -> np.ndarray:
    return 20.0 * np.log10(np.maximum(speech.rms.astype(np.float64), 1e-6))


def sounding(speech: Speech, above_floor_db: float = 12.0) -> np.ndarray:
    """(T,) bool: frames with a voice: speech by the voice detector, or as loud as speech well
    above the recording's own quiet floor (its 10th percentile). silero misses exclamations,
    laughter and speech over noise (drive_d6 from 5 s on: 13 dB over its floor, VAD 0.15-0.2);
    closing the mouth there made the dub's mouth r with the real one fall from 0.58 to 0.25."""
    db = _db(speech)
    return speech.vad | (db > np.percentile(db, 10) + above_floor_db)


def loudness_openness(speech: Speech) -> np.ndarray:
    """(T,) in [0, 1]: how far open the mouth should be, from the frame's loudness relative to the
    recording's own voiced frames (5th..95th percentile in dB); 0 where nothing sounds."""
    db, voiced = _db(speech), sounding(speech)
    if not voiced.any():
        return np.zeros(len(speech))
    lo, hi = np.percentile(db[voiced], [5, 95])
    q = np.clip((db - lo) / max(hi - lo, 1.0), 0.0, 1.0)
    return np.where(voiced, q, 0.0)


def speech_features(audio: np.ndarray, fps: float, n_frames: int, vad_model, threshold: float,
                    formants: bool = True) -> dict[str, np.ndarray]:
    """What `as_speech` needs, as plain arrays (to store with a row): log-mel (M, 80) of 16 kHz
    mono audio, and per video frame its RMS, voice activity and (unless `formants` is false: only
    the phonetic model reads them) formants, for n_frames frames."""
    from facefab.audio.features import fit_audio, frame_rms, frame_sample_bounds, frame_voice_activity, log_mel
    from facefab.audio.formants import formant_tracks

    audio = fit_audio(audio, int(frame_sample_bounds(n_frames, fps)[-1]))
    arrays = {"mel": log_mel(audio), "rms": frame_rms(audio, fps, n_frames),
              "vad": frame_voice_activity(audio, vad_model, fps, n_frames, threshold)}
    if formants:
        arrays["formants"] = formant_tracks(audio, fps, n_frames)
    return arrays


def as_speech(arrays: Mapping[str, np.ndarray], prefix: str, fps: float, context: int) -> Speech:
    """The Speech of `speech_features`' arrays stored under `{prefix}_mel`, `{prefix}_rms`, ...
    (`formants` may be missing: rows analysed before it existed)."""
    from facefab.audio.features import mel_windows

    mel, rms = arrays[f"{prefix}_mel"], arrays[f"{prefix}_rms"]
    return Speech(mel[mel_windows(len(rms), fps, len(mel), context)], rms, np.asarray(arrays[f"{prefix}_vad"], bool),
                  arrays.get(f"{prefix}_formants"))

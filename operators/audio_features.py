"""Audio features of a track's time window, aligned to its video frames.

Time convention (shared by every per-frame audio feature here): the audio window is the track's
(`track_time_window`: the clip's start/end narrowed to the `_track` frames), and video frame t of
it covers [t/fps, (t+1)/fps) seconds after the window start; its centre is (t + 0.5)/fps.
Per-frame RMS and voice activity average over that interval; the mel window of frame t is
centred on the mel frame nearest to that centre.

- `AudioFeatures`: log-mel spectrogram (torch.stft + an HTK mel filterbank), per-frame mel
  windows (V-Express / Hallo style), silero-vad voice activity and RMS energy per frame.
- `SpeechEncoder`: hidden states of a local wav2vec2-family or whisper checkpoint, resampled
  to one vector per video frame.

A clip without an audio track is an error only with `require_audio=True`. By default it gets the
features of digital silence (mel at the log floor, RMS 0, no voice activity, has_speech=False,
speech_ratio 0.0), so audio-conditioned training and the quality filter treat it as a silent clip
instead of losing the row.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from facefab.operators.arrays import save_npz
from facefab.operators.base import Operator, OperatorError, Resources
from facefab.operators.generation import CheckpointError, resolve_checkpoint
from facefab.operators.io import read_audio
from facefab.operators.parsing import track_time_window, video_frame_count

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


def clip_audio(row: dict[str, Any], n_frames: int, require_audio: bool,
               storage_options: dict[str, Any] | None = None) -> np.ndarray | None:
    """16 kHz mono audio of the track's frames, exactly n_frames/fps long; None when it has none."""
    if not row.get("has_audio", True):
        if require_audio:
            raise OperatorError(NO_AUDIO_MESSAGE)
        return None
    start, end = track_time_window(row)
    audio = read_audio(row["video_uri"], sample_rate=SAMPLE_RATE, mono=True, start=start, end=end,
                       storage_options=storage_options)
    return fit_audio(audio, int(frame_sample_bounds(n_frames, float(row["fps"]))[-1]))


def clip_audio_or_silence(row: dict[str, Any], n_frames: int, require_audio: bool,
                          storage_options: dict[str, Any] | None = None) -> tuple[np.ndarray, bool]:
    """(audio, has_audio): `clip_audio`, with digital silence of the same length when there is none."""
    audio = clip_audio(row, n_frames, require_audio, storage_options)
    if audio is None:
        return np.zeros(int(frame_sample_bounds(n_frames, float(row["fps"]))[-1]), np.float32), False
    return audio, True


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


# -- operators -----------------------------------------------------------------------------------

class AudioFeatures(Operator):
    """Log-mel, per-frame mel windows, voice activity and RMS of the track's clip window.

    Artifact audio_features_uri (.npz): mel (M, n_mels) float32, frame_index_map (T, 2c+1) int32
    (rows index `mel`), vad (T,) bool, rms (T,) float32, has_audio, has_speech (bool scalars),
    sample_rate, hop_length, fps. Columns: audio_features_uri, speech_ratio (fraction of frames
    with voice activity), has_speech.
    """

    name = "audio_features"
    version = "1"
    inputs = ("video_uri", "start", "end", "fps")
    outputs = ("audio_features_uri", "speech_ratio", "has_speech")
    stateful = True  # holds the VAD model
    default_resources = Resources(num_cpus=1.0)

    @dataclass
    class Config(MelSettings):  # the mel fields (--audio.n-mels, ...) plus:
        context: int = 8  # mel frames each side of a video frame (8 x 10 ms ~ 2 frames at 25 fps)
        vad_threshold: float = 0.5
        require_audio: bool = False  # True: a clip without audio fails instead of reading as silence

    def setup(self) -> None:
        self._vad = load_vad()

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        fps, n_frames = float(row["fps"]), video_frame_count(row)
        audio, has_audio = clip_audio_or_silence(row, n_frames, self.config.require_audio,
                                                 self.ctx.storage_options)
        settings = self.config  # a MelSettings
        mel = log_mel(audio, settings)
        vad = frame_voice_activity(audio, self._vad, fps, n_frames, self.config.vad_threshold)
        uri = self.ctx.artifact_uri("audio_features", row["id"], ".npz")
        save_npz(uri, self.ctx.storage_options, mel=mel,
                 frame_index_map=mel_windows(n_frames, fps, len(mel), self.config.context, settings),
                 vad=vad, rms=frame_rms(audio, fps, n_frames), has_audio=np.bool_(has_audio),
                 has_speech=np.bool_(vad.any()), sample_rate=np.int32(SAMPLE_RATE),
                 hop_length=np.int32(settings.hop_length), fps=np.float64(fps))
        return {"audio_features_uri": uri, "speech_ratio": float(vad.mean()) if n_frames else 0.0,
                "has_speech": bool(vad.any())}


def resample_frames(hidden, n_frames: int):
    """(L, ...) features linearly resampled in time to (n_frames, ...) (Hallo's interpolation)."""
    import torch

    flat = hidden.reshape(hidden.shape[0], -1).T[None]  # (1, C, L)
    out = torch.nn.functional.interpolate(flat, size=n_frames, mode="linear", align_corners=False)
    return out[0].T.reshape(n_frames, *hidden.shape[1:])


class SpeechEncoder(Operator):
    """Per-video-frame speech embeddings from a local (or s3:// cached) transformers checkpoint.

    Supports wav2vec2-family encoders (any model whose input is raw `input_values`: wav2vec2,
    HuBERT, WavLM, ...) and whisper (its encoder only). Never contacts a model hub.
    Artifact speech_embeddings_uri (.npz): embeddings (T, D) float32 — (T, layers, D) with
    all_layers — and has_audio. A clip without audio is encoded as silence unless require_audio.
    """

    name = "speech_encoder"
    version = "1"
    inputs = ("video_uri", "start", "end", "fps")
    outputs = ("speech_embeddings_uri",)
    stateful = True
    default_resources = Resources(num_cpus=1.0, num_gpus=0.25)

    WHISPER_WINDOW_S = 30  # whisper's encoder only takes 30-s inputs; longer clips are chunked

    @dataclass
    class Config:
        model_path: str = ""  # local folder or s3://... folder of a save_pretrained checkpoint
        cache_dir: str | None = None  # for remote model folders; None: generation.DEFAULT_CACHE_DIR
        layer: int = -1  # index into the hidden states (-1: last layer)
        all_layers: bool = False  # store every hidden state (Hallo's audio_feature stacking)
        normalize: bool = True  # wav2vec2 zero-mean/unit-variance input when no preprocessor config
        dtype: str = "float32"
        require_audio: bool = False

    def setup(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModel

        if not self.config.model_path:
            raise OperatorError("SpeechEncoder needs Config.model_path (a local or s3:// checkpoint folder)")
        try:
            folder = resolve_checkpoint(self.config.model_path, self.ctx.storage_options, self.config.cache_dir)
        except CheckpointError as exc:
            raise OperatorError(str(exc)) from None
        model_config = AutoConfig.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=getattr(torch, self.config.dtype))
        self._is_whisper = model_config.model_type == "whisper"
        if self._is_whisper:
            model = model.get_encoder()
        elif model.main_input_name != "input_values":
            raise OperatorError(f"{model_config.model_type} is not a raw-audio speech encoder "
                                "(expected wav2vec2/HuBERT/WavLM or whisper)")
        self._device = "cuda" if self.ctx.use_gpu and torch.cuda.is_available() else "cpu"
        self._model = model.to(self._device).eval()
        self._extractor = self._feature_extractor(folder, model_config)

    def _feature_extractor(self, folder: str, model_config):
        from transformers import AutoFeatureExtractor, WhisperFeatureExtractor

        if os.path.exists(os.path.join(folder, "preprocessor_config.json")):
            return AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
        if self._is_whisper:
            return WhisperFeatureExtractor(feature_size=model_config.num_mel_bins)
        return None  # wav2vec2 family: raw samples, optionally normalised below

    def _hidden_states(self, inputs) -> Any:
        import torch

        with torch.inference_mode():
            out = self._model(inputs.to(self._device, self._model.dtype),
                              output_hidden_states=self.config.all_layers or self.config.layer != -1)
        if self.config.all_layers:
            return torch.stack(out.hidden_states, dim=2)[0]  # (L, layers, D)
        if self.config.layer == -1:
            return out.last_hidden_state[0]
        return out.hidden_states[self.config.layer][0]

    def _encode_raw(self, audio: np.ndarray):
        import torch

        if self._extractor is not None:
            values = self._extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
        else:
            values = torch.from_numpy(audio)[None]
            if self.config.normalize:
                values = (values - values.mean()) / torch.sqrt(values.var() + 1e-7)
        return self._hidden_states(values)

    def _encode_whisper(self, audio: np.ndarray):
        import torch

        window = self.WHISPER_WINDOW_S * SAMPLE_RATE
        pieces = []
        for begin in range(0, max(len(audio), 1), window):
            chunk = audio[begin:begin + window]
            feats = self._extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            hidden = self._hidden_states(feats)
            # The encoder pads to 30 s; keep the frames that cover real audio.
            used = int(np.ceil(len(chunk) / window * hidden.shape[0]))
            pieces.append(hidden[:max(used, 1)])
        return torch.cat(pieces)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        n_frames = video_frame_count(row)
        audio, has_audio = clip_audio_or_silence(row, n_frames, self.config.require_audio,
                                                 self.ctx.storage_options)
        hidden = self._encode_whisper(audio) if self._is_whisper else self._encode_raw(audio)
        embeddings = resample_frames(hidden.float().cpu(), n_frames).numpy().astype(np.float32)
        uri = self.ctx.artifact_uri("speech_embeddings", row["id"], ".npz")
        save_npz(uri, self.ctx.storage_options, embeddings=embeddings, has_audio=np.bool_(has_audio))
        return {"speech_embeddings_uri": uri}


__all__ = [
    "AudioFeatures",
    "MelSettings",
    "SpeechEncoder",
    "frame_rms",
    "frame_voice_activity",
    "load_vad",
    "log_mel",
    "mel_filterbank",
    "mel_windows",
]

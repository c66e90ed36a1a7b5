"""The `audio` and `speech_encoder` stages: per-frame audio features of a track's time window
(`track_row.track_time_window`: the clip's start/end narrowed to the `_track` frames).

- `AudioFeatures`: log-mel spectrogram (torch.stft + an HTK mel filterbank), per-frame mel
  windows (V-Express / Hallo style), silero-vad voice activity and RMS energy per frame
  (`facefab.audio.features`, which also states the time convention).
- `SpeechEncoder`: hidden states of a local wav2vec2-family or whisper checkpoint, resampled
  to one vector per video frame.

A clip without an audio track is an error only with `require_audio=True`. By default it gets the
features of digital silence (mel at the log floor, RMS 0, no voice activity, has_speech=False,
speech_ratio 0.0), so audio-conditioned training and the quality filter treat it as a silent clip
instead of losing the row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from facefab.audio.features import (
    SAMPLE_RATE,
    MelSettings,
    frame_rms,
    frame_voice_activity,
    load_vad,
    log_mel,
    mel_windows,
)
from facefab.media.arrays import save_npz
from facefab.models.weights import CheckpointError, resolve_checkpoint

from .base import Operator, OperatorError, Resources, register_stage
from .track_row import clip_audio_or_silence, video_frame_count


@register_stage
class AudioFeatures(Operator):
    """Log-mel, per-frame mel windows, voice activity and RMS of the track's clip window.

    Artifact audio_features_uri (.npz): mel (M, n_mels) float32, frame_index_map (T, 2c+1) int32
    (rows index `mel`), vad (T,) bool, rms (T,) float32, has_audio, has_speech (bool scalars),
    sample_rate, hop_length, fps. Columns: audio_features_uri, speech_ratio (fraction of frames
    with voice activity), has_speech.
    """

    name = "audio"
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


@register_stage
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
    "mel_windows",
]

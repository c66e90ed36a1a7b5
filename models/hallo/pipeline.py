"""Hallo inference: one portrait + speech -> a talking video (facefab.models.shared.talking's interface).

Pipeline folder (what `facefab train hallo` exports and `facefab convert hallo` writes):

    model_index.json     {"_class_name": "HalloPipeline", "<part>": ["<library>", "<class>"], ...}
    pipeline.json        the config (models/hallo/config.py): size, parts, audio, masks, latents, sampling
    reference_unet/      UNet2DConditionModel: the reference image's (and motion frames') features
    denoising_unet/      AudioUNetMotionModel: SD spatial layers + AnimateDiff motion modules + audio modules
    face_locator/        FaceLocator: face box image -> features added after the denoiser's conv_in
    imageproj/           ImageProjModel: face identity embedding -> cross-attention tokens
    audioproj/           AudioProjModel: per-frame speech features -> audio tokens
    vae/                 AutoencoderKL, when latent.type is "vae" (the tiny config uses pixel latents)
    audio_encoder/       transformers Wav2Vec2Model, when audio.features is "wav2vec2" (converted checkpoints)

Generation (`HalloPipeline.__call__`): the face and lip boxes of the reference mesh give the face
locator's input and the pose / face / lip masks of the audio attention (models/hallo/masks.py), scaled
by `sampling.region_weights`; the speech becomes per-frame audio tokens. The clip is made in windows of
`clip_frames` frames, one after another (shared.sampling.sample_continued): each window's reference-net
pass takes the reference and the last `motion_frames` latents of the window before (the reference
repeated for the first), and DDIM with classifier-free guidance denoises it. The unconditional branch
has no reference tokens (zeroed), the zero face embedding's tokens, no face-region features and zero
audio tokens, as the official pipeline (which drops the reference tokens instead of zeroing them).

Face identity: the official model embeds the reference with insightface's ArcFace. No such weights
exist offline, so the embedding is optional: `face_embedding=` (a (512,) vector computed elsewhere) or a
`face_encoder` callable (crop, points) -> (512,) given to the pipeline; without either it is zeros (the
official unconditional input). Hallo has no head-pose input: `pose` is ignored (with a warning).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..shared import pipeline_folder as folder_io
from ..shared.latents import PixelCodec, VaeCodec, codec_from_folder, to_uint8, to_unit
from ..shared.net_pipeline import NetPipeline
from ..shared.sampling import guided, make_scheduler, sample_continued
from ..shared.speech import frame_windows, speech_windows
from ..weights import CheckpointError, pick_device, pick_dtype, resolve_checkpoint
from .config import check, latent_factor
from .masks import box_image, region_boxes, region_masks
from .net import PART_CLASSES, HalloNet

log = logging.getLogger(__name__)

VAE_FOLDER, AUDIO_ENCODER_FOLDER = "vae", "audio_encoder"
FaceEncoder = Callable[[np.ndarray, np.ndarray], np.ndarray]


# -- speech features --------------------------------------------------------------------------------------

def standardised_mel(mel: np.ndarray, config: dict) -> np.ndarray:
    """Log-mel windows (T, W >= seq_len*blocks, 80) centred on each frame -> (T, seq_len, blocks, 80)
    standardised features (the training samples' path; speech_windows gives the same layout)."""
    proj, audio = config["audio_proj"], config["audio"]
    seq_len, blocks = int(proj["seq_len"]), int(proj["blocks"])
    mel = np.asarray(mel, np.float32)[:, : seq_len * blocks].reshape(len(mel), seq_len, blocks, mel.shape[-1])
    return ((mel - audio["mel_mean"]) / audio["mel_std"]).astype(np.float32)


def wav2vec2_states(encoder, audio: np.ndarray, num_frames: int) -> torch.Tensor:
    """(num_frames, layers, D): every hidden state of a Wav2Vec2Model after its input (the official
    `features: all`), the convolutional features linearly interpolated to one per video frame first
    (hallo/models/wav2vec.py)."""
    param = next(encoder.parameters())
    wave = torch.as_tensor(np.asarray(audio, np.float32))
    wave = (wave - wave.mean()) / torch.sqrt(wave.var() + 1e-7)  # Wav2Vec2FeatureExtractor's do_normalize

    def per_video_frame(_module, _args, features: torch.Tensor) -> torch.Tensor:  # (1, C, N) -> (1, C, T)
        return torch.nn.functional.interpolate(features.float(), size=num_frames, mode="linear",
                                               align_corners=True).to(features.dtype)

    handle = encoder.feature_extractor.register_forward_hook(per_video_frame)
    try:
        with torch.no_grad():
            states = encoder(wave[None].to(param.device, param.dtype), output_hidden_states=True).hidden_states[1:]
    finally:
        handle.remove()
    return torch.stack(states, dim=2)[0].float()


def speech_features(config: dict, audio: np.ndarray, fps: float, num_frames: int,
                    audio_encoder=None) -> np.ndarray:
    """(num_frames, seq_len, blocks, channels) float32 features of 16 kHz mono `audio`, AudioProjModel's input."""
    proj = config["audio_proj"]
    if config["audio"]["features"] == "mel":
        mel = speech_windows(audio, fps, num_frames, int(proj["seq_len"]), int(proj["blocks"]))
        return standardised_mel(mel.reshape(num_frames, -1, mel.shape[-1]), config)
    if audio_encoder is None:
        raise CheckpointError(f"this Hallo checkpoint uses wav2vec2 speech features but has no {AUDIO_ENCODER_FOLDER}/")
    states = wav2vec2_states(audio_encoder, audio, num_frames).cpu().numpy()
    return np.ascontiguousarray(frame_windows(states, int(proj["seq_len"])), np.float32)


# -- the folder -----------------------------------------------------------------------------------------------

def save_parts(parts: dict[str, nn.Module], folder: str, config: dict) -> None:
    """Write `parts` as save_pretrained subfolders (safetensors), pipeline.json and model_index.json."""
    folder_io.save_parts(parts, folder, check(config), "HalloPipeline")


def read_config(folder: str) -> dict:
    return folder_io.read_config(folder, check, "Hallo")


def load_parts(folder: str, device: Any = "cpu", dtype: Any = "fp32") -> dict[str, nn.Module]:
    return folder_io.load_parts(folder, PART_CLASSES, "Hallo", "hallo", device, dtype)


def write_index(folder: str, classes: dict[str, type]) -> None:
    folder_io.write_index(folder, "HalloPipeline", classes)


# -- the pipeline ---------------------------------------------------------------------------------------------

class HalloPipeline(NetPipeline):
    """One reference portrait + speech -> talking frames (see the module docstring)."""

    def __init__(self, net: HalloNet, codec: PixelCodec | VaeCodec, config: dict, audio_encoder=None,
                 face_encoder: FaceEncoder | None = None):
        self.net, self.codec, self.config = net.eval(), codec, check(config)
        self.audio_encoder, self.face_encoder = audio_encoder, face_encoder

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "auto", dtype: str = "auto") -> HalloPipeline:
        local = resolve_checkpoint(folder)
        config = read_config(local)
        device = pick_device(device) if not isinstance(device, torch.device) else device
        dtype = pick_dtype(dtype, device) if not isinstance(dtype, torch.dtype) else dtype
        net = HalloNet(**load_parts(local, device, dtype))
        codec = codec_from_folder(local, config["latent"], device, dtype)
        encoder = None
        if config["audio"]["features"] == "wav2vec2":
            from transformers import Wav2Vec2Model

            path = os.path.join(local, AUDIO_ENCODER_FOLDER)
            if not os.path.isdir(path):
                raise CheckpointError(f"{folder}: wav2vec2 speech features but no {AUDIO_ENCODER_FOLDER}/ folder")
            encoder = Wav2Vec2Model.from_pretrained(path, use_safetensors=True, local_files_only=True)
            encoder = encoder.to(device=device, dtype=dtype).eval()
        return cls(net, codec, config, encoder)

    def save_pretrained(self, folder: str) -> None:
        save_parts(self.net.parts(), folder, self.config)
        if isinstance(self.codec, VaeCodec):
            self.codec.vae.save_pretrained(os.path.join(folder, VAE_FOLDER), safe_serialization=True)
        if self.audio_encoder is not None:
            self.audio_encoder.save_pretrained(os.path.join(folder, AUDIO_ENCODER_FOLDER), safe_serialization=True)

    def conditions(self, reference: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(face box image (S, S), region masks (3, M, M) scaled by the region weights) of a reference."""
        size, masks = self.size, self.config["masks"]
        face_box, lip_box = region_boxes(points, size, **masks)
        weights = np.asarray(self.config["sampling"]["region_weights"], np.float32)[:, None, None]
        return box_image(face_box, size), region_masks(face_box, lip_box, size, **masks) * weights

    @torch.no_grad()
    def __call__(self, reference: np.ndarray, points: np.ndarray, audio: np.ndarray, fps: float, num_frames: int, *,
                 pose: np.ndarray | None = None, steps: int | None = None, guidance_scale: float | None = None,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None,
                 face_embedding: np.ndarray | None = None) -> np.ndarray:
        size, sampling = self.size, self.config["sampling"]
        if reference.shape != (size, size, 3) or reference.dtype != np.uint8:
            raise ValueError(f"reference must be ({size}, {size}, 3) uint8, got {reference.shape} {reference.dtype}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if pose is not None:
            log.warning("hallo has no head-pose input: the given pose track is ignored")
        steps = int(steps or sampling["steps"])
        scale = float(sampling["guidance_scale"] if guidance_scale is None else guidance_scale)
        window, k = int(sampling["clip_frames"]), int(sampling["motion_frames"])
        device, dtype, net, guide = self.device, self.dtype, self.net, scale > 1.0

        face_region, masks = self.conditions(reference, np.asarray(points, np.float32))
        features = net.region_features(torch.from_numpy(face_region)[None, None].to(device))
        masks = torch.from_numpy(masks)[None].to(device, dtype)
        speech = speech_features(self.config, audio, fps, num_frames, self.audio_encoder)
        last = len(speech) - 1  # the last window may run past the clip: its frames repeat the last features
        audio_tokens = net.speech_tokens(torch.from_numpy(speech)[None].to(device))
        embedding = self._face_embedding(reference, points, face_embedding)
        tokens = net.face_tokens(torch.from_numpy(embedding)[None].to(device))
        reference_latents = self.codec.encode(to_unit(reference[None], device, dtype))
        if guide:  # batch [unconditional, conditional]
            tokens = torch.cat([net.face_tokens(torch.zeros_like(torch.from_numpy(embedding))[None].to(device)),
                                tokens])
            features = torch.cat([torch.zeros_like(features), features])
            masks = masks.repeat(2, 1, 1, 1)
        written: list[torch.Tensor] = []

        def predict(latents: torch.Tensor, t: torch.Tensor, motion: torch.Tensor, frames: slice) -> torch.Tensor:
            if not written or written[0] is not motion:  # a new window: its reference-net pass
                written[:] = [motion]
                batch = 2 if guide else 1
                net.write_reference(reference_latents.repeat(batch, 1, 1, 1), motion.repeat(batch, 1, 1, 1, 1),
                                    tokens, torch.tensor([0.0, 1.0]) if guide else None)
            index = np.minimum(np.arange(frames.start, frames.stop), last)
            audio = audio_tokens[torch.from_numpy(index).to(device)]
            if guide:
                latents, audio = torch.cat([latents, latents]), torch.cat([torch.zeros_like(audio), audio])
            out = net.denoise(latents, t, tokens, features, audio, masks).float()
            if guide:
                uncond, cond = out.chunk(2)
                return guided(cond, uncond, scale)
            return out

        scheduler = make_scheduler(self.config["scheduler"])
        h = size // latent_factor(self.config)
        first_motion = reference_latents[:, :, None].repeat(1, 1, k, 1, 1).float()
        try:
            latents = sample_continued(predict, scheduler, (1, self.codec.channels, num_frames, h, h), first_motion,
                                       steps, window, seed, progress)
        finally:
            net.clear()
        return to_uint8(self.codec.decode(latents[0].transpose(0, 1).to(dtype)))

    def _face_embedding(self, reference: np.ndarray, points: np.ndarray, given: np.ndarray | None) -> np.ndarray:
        dim = int(self.config["image_proj"]["clip_embeddings_dim"])
        if given is None and self.face_encoder is not None:
            given = self.face_encoder(reference, points)
        if given is None:
            return np.zeros(dim, np.float32)
        given = np.asarray(given, np.float32).reshape(-1)
        if given.shape != (dim,):
            raise ValueError(f"face embedding must have {dim} values, got {given.shape}")
        return given


__all__ = ["HalloPipeline", "load_parts", "read_config", "save_parts", "speech_features", "standardised_mel",
           "wav2vec2_states", "write_index"]

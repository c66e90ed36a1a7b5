"""V-Express inference (and the network the training stages share): one portrait + speech -> a talking video.

Pipeline folder (what `facefab train v-express` exports and `facefab convert v-express` writes):

    model_index.json         {"_class_name": "VExpressPipeline", "<part>": ["<library>", "<class>"], ...}
    pipeline.json            the config (models/v_express/config.py): size, latents, audio, scheduler, sampling
    reference_net/           UNet2DConditionModel: the reference image's appearance (ReferenceNet)
    denoising_unet/          AudioUNetMotionModel: SD spatial layers + AnimateDiff motion modules; its spatial
                             cross-attention (attn2) attends to the projected audio: V-Express' audio attention;
                             with reference_attention "separate" (the official), a reference attention
                             (norm1_5, attn1_5) in every spatial transformer block
    v_kps_guider/            VKpsGuider: V-kps image -> features added after the denoiser's conv_in
    audio_projection/        AudioProjection: per-frame speech tokens -> the denoiser's context tokens
    vae/                     AutoencoderKL, when latent.type is "vae" (the tiny config uses pixel latents)
    audio_encoder/           transformers Wav2Vec2Model, when audio.features is "wav2vec2" (converted checkpoints)

Generation (`VExpressPipeline.__call__`, facefab.models.shared.talking's interface): the reference is
encoded once and run through the reference net, whose spatial tokens every denoiser frame attends to
(shared.reference_attention: the official separate attn1_5, scaled by sampling.reference_attention_weight,
or joined to attn1 in older folders); V-kps images of the reference's keypoints (held still, or
turned by `pose` offsets) go through the guider; the speech becomes per-frame audio context tokens. DDIM with
classifier-free guidance (the unconditional branch: zeroed reference tokens, kps features and audio
context, as the official pipeline) denoises overlapping 24-frame windows of the whole clip, averaging the
overlaps every step (shared.sampling.sample_overlapping).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from ..shared import pipeline_folder as folder_io
from ..shared.guider import guider_conditioning
from ..shared.latents import PixelCodec, VaeCodec, codec_from_folder, to_uint8, to_unit
from ..shared.motion_unet import AudioUNetMotionModel, build_denoiser
from ..shared.net_pipeline import NetPipeline
from ..shared.reference_attention import install_reference_attention
from ..shared.sampling import guided, initial_noise, make_scheduler, sample_overlapping
from ..shared.speech import speech_windows
from ..weights import CheckpointError, pick_device, pick_dtype, resolve_checkpoint
from .audio_projection import AudioProjection
from .config import audio_tokens, check
from .v_kps_guider import VKpsGuider, kps_images, posed_v_kps

PART_CLASSES: dict[str, type] = {"reference_net": UNet2DConditionModel, "denoising_unet": AudioUNetMotionModel,
                                 "v_kps_guider": VKpsGuider, "audio_projection": AudioProjection}
VAE_FOLDER, AUDIO_ENCODER_FOLDER = "vae", "audio_encoder"
GUIDER_CHUNK = 16  # frames per V-kps guider pass (the official batches 16 too)


# -- the network --------------------------------------------------------------------------------------

def _fresh_denoiser(config: dict) -> AudioUNetMotionModel:
    denoiser = build_denoiser(config["unet"], config["motion_preset"],
                              reference_attention=config.get("reference_attention", "separate"))
    for name, module in denoiser.named_modules():
        if (".attentions." in name and name.endswith("attn2.to_out.0")) or \
                (".motion_modules." in name and name.endswith("proj_out")):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    return denoiser


_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "reference_net": lambda config: UNet2DConditionModel(**config["unet"]),
    "denoising_unet": _fresh_denoiser,
    "v_kps_guider": lambda config: VKpsGuider(**config["v_kps_guider"]),
    "audio_projection": lambda config: AudioProjection(**config["audio_projection"]),
}


def build_parts(config: dict, only: tuple[str, ...] = tuple(PART_CLASSES)) -> dict[str, nn.Module]:
    """Fresh parts of `config` (those named in `only`). As the official training starts from SD
    weights, the denoiser's audio attention output (spatial attn2.to_out) and its motion modules'
    output (proj_out) start at zero, so a fresh denoiser is the plain image UNet until the stages
    train those."""
    check(config)
    return {name: _BUILDERS[name](config) for name in only}


kps_conditioning = guider_conditioning  # the V-kps features enter after conv_in (shared.guider)


class _ScaledAttention:
    """An attention processor whose output is multiplied by `weight` (the official audio_attention_weight)."""

    def __init__(self, weight: float) -> None:
        self.weight, self.inner = weight, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        return self.weight * self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def set_audio_attention_weight(denoiser: nn.Module, weight: float) -> None:
    """Scale the output of every spatial cross-attention (the audio attention) of `denoiser` by `weight`."""
    processors = dict(denoiser.attn_processors)
    for name in processors:
        if ".attentions." in name and name.endswith("attn2.processor"):
            processors[name] = AttnProcessor2_0() if weight == 1 else _ScaledAttention(weight)
    denoiser.set_attn_processor(processors)


class VExpressNet(nn.Module):
    """The four trained parts, wired: the reference net writes the ReferenceBank the denoiser reads."""

    def __init__(self, reference_net: UNet2DConditionModel, denoising_unet: AudioUNetMotionModel,
                 v_kps_guider: VKpsGuider, audio_projection: AudioProjection):
        super().__init__()
        self.reference_net, self.denoising_unet = reference_net, denoising_unet
        self.v_kps_guider, self.audio_projection = v_kps_guider, audio_projection
        mode = getattr(denoising_unet.config, "reference_attention", "joined")
        self.bank = install_reference_attention(reference_net, denoising_unet, mode=mode)

    @classmethod
    def fresh(cls, config: dict) -> VExpressNet:
        return cls(**build_parts(config))

    def parts(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in PART_CLASSES}

    def write_reference(self, latents: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Run the reference net on (B, C, h, w) latents (timestep 0, a zero context token, as the
        official); sample i's reference tokens are zeroed where `keep` (B,) is 0 (its "no reference")."""
        dtype = self.reference_net.dtype
        context = torch.zeros(latents.shape[0], 1, self.reference_net.config.cross_attention_dim,
                              device=latents.device, dtype=dtype)
        timestep = torch.zeros(latents.shape[0], device=latents.device, dtype=torch.long)
        with self.bank.writing(frames_per_sample=1):
            self.reference_net(latents.to(dtype), timestep, encoder_hidden_states=context)
        if keep is not None:
            for name, tokens in self.bank.tokens.items():
                self.bank.tokens[name] = tokens * keep.to(tokens).view(-1, 1, 1)

    def audio_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L, E) speech tokens of N frames -> (N, Q, D) context tokens."""
        return self.audio_projection(tokens.to(self.audio_projection.dtype))

    def denoise(self, latents: torch.Tensor, timestep: torch.Tensor, kps_features: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) noisy latents -> the model output, with (B, C0, F, h, w) kps features and
        (B*F, Q, D) audio context; reads the reference tokens written last."""
        dtype = self.denoising_unet.dtype
        with kps_conditioning(self.denoising_unet, kps_features):
            return self.denoising_unet(latents.to(dtype), timestep, encoder_hidden_states=context.to(dtype)).sample

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, reference_latents: torch.Tensor,
                kps: torch.Tensor, speech: torch.Tensor, keep_reference: torch.Tensor | None = None,
                keep_kps: torch.Tensor | None = None, keep_audio: torch.Tensor | None = None) -> torch.Tensor:
        """The training forward: noisy (B, C, F, h, w), reference_latents (B, C, h, w), kps images
        (B, 3, F, H, W) in [0, 1], speech tokens (B, F, L, E); `keep_*` (B,) 0/1 drop that condition
        for a sample (classifier-free guidance training, V-Express' condition dropout)."""
        f = speech.shape[1]
        features = self.v_kps_guider(kps.to(self.v_kps_guider.dtype))
        context = self.audio_context(speech.flatten(0, 1))
        if keep_kps is not None:
            features = features * keep_kps.to(features).view(-1, 1, 1, 1, 1)
        if keep_audio is not None:
            context = context * keep_audio.to(context).repeat_interleave(f).view(-1, 1, 1)
        self.write_reference(reference_latents, keep_reference)
        try:
            return self.denoise(noisy, timesteps, features, context)
        finally:
            self.bank.clear()


# -- speech features ------------------------------------------------------------------------------------

def mel_tokens(mel_windows: np.ndarray, config: dict) -> np.ndarray:
    """(T, >=L, 80) log-mel windows centred on each frame -> (T, L, 80) standardised tokens."""
    tokens, _ = audio_tokens(config)
    audio = config["audio"]
    return ((np.asarray(mel_windows[:, :tokens], np.float32) - audio["mel_mean"]) / audio["mel_std"]).astype(np.float32)


def wav2vec2_windows(hidden: torch.Tensor, num_frames: int, pad_frames: int, per_frame: int = 2) -> torch.Tensor:
    """(N, D) wav2vec2 states of the clip -> (T, per_frame*(2*pad+1), D): the official resampling to
    `per_frame` states per video frame, zero-padded by `pad_frames` frames, a window around each frame."""
    states = torch.nn.functional.interpolate(hidden.float().T[None], size=per_frame * num_frames, mode="linear")[0].T
    pad = states.new_zeros(per_frame * pad_frames, states.shape[1])
    states = torch.cat([pad, states, pad])
    span = per_frame * (2 * pad_frames + 1)
    return torch.stack([states[per_frame * i: per_frame * i + span] for i in range(num_frames)])


def speech_tokens(config: dict, audio: np.ndarray, fps: float, num_frames: int, audio_encoder=None) -> np.ndarray:
    """(T, L, E) float32 speech tokens of 16 kHz mono `audio` for `num_frames` frames at `fps`."""
    settings = config["audio"]
    if settings["features"] == "mel":
        window = 2 * int(settings["pad_frames"]) + 1
        mel = speech_windows(audio, fps, num_frames, window, int(settings["mel_per_frame"]))
        return mel_tokens(mel.reshape(num_frames, -1, mel.shape[-1]), config)
    if audio_encoder is None:
        raise CheckpointError("this V-Express checkpoint uses wav2vec2 speech features but has no audio_encoder/")
    wave = torch.as_tensor(np.asarray(audio, np.float32))
    wave = (wave - wave.mean()) / torch.sqrt(wave.var() + 1e-7)  # Wav2Vec2FeatureExtractor's do_normalize
    param = next(audio_encoder.parameters())
    with torch.no_grad():
        hidden = audio_encoder(wave[None].to(param.device, param.dtype)).last_hidden_state[0]
    return wav2vec2_windows(hidden, num_frames, int(settings["pad_frames"]),
                            int(settings["tokens_per_frame"])).cpu().numpy()


# -- the folder -------------------------------------------------------------------------------------------

def save_parts(parts: dict[str, nn.Module], folder: str, config: dict) -> None:
    """Write `parts` as save_pretrained subfolders (safetensors), pipeline.json and model_index.json."""
    folder_io.save_parts(parts, folder, check(config), "VExpressPipeline")


def read_config(folder: str) -> dict:
    return folder_io.read_config(folder, check, "V-Express")


def load_parts(folder: str, device: Any = "cpu", dtype: Any = "fp32") -> dict[str, nn.Module]:
    return folder_io.load_parts(folder, PART_CLASSES, "V-Express", "v-express", device, dtype)


# -- the pipeline -------------------------------------------------------------------------------------------

class VExpressPipeline(NetPipeline):
    """One reference portrait + speech (+ an optional head-pose track) -> talking frames (see the module docstring)."""

    def __init__(self, net: VExpressNet, codec: PixelCodec | VaeCodec, config: dict, audio_encoder=None):
        self.net, self.codec, self.config = net.eval(), codec, check(config)
        self.audio_encoder = audio_encoder
        set_audio_attention_weight(net.denoising_unet, float(config["sampling"]["audio_attention_weight"]))
        net.bank.weight = float(config["sampling"].get("reference_attention_weight", 1.0))

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "auto", dtype: str = "auto") -> VExpressPipeline:
        local = resolve_checkpoint(folder)
        config = read_config(local)
        device = pick_device(device) if not isinstance(device, torch.device) else device
        dtype = pick_dtype(dtype, device) if not isinstance(dtype, torch.dtype) else dtype
        net = VExpressNet(**load_parts(local, device, dtype))
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

    @torch.no_grad()
    def __call__(self, reference: np.ndarray, points: np.ndarray, audio: np.ndarray, fps: float, num_frames: int, *,
                 pose: np.ndarray | None = None, steps: int | None = None, guidance_scale: float | None = None,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(num_frames, S, S, 3) uint8 frames of `reference` (S, S, 3) speaking `audio` (16 kHz mono).
        `points`: the reference's (478, 2) mesh in crop pixels; `pose`: (num_frames, 3) yaw, pitch, roll
        offsets in degrees from the reference's pose (a driving series relative to its first frame, as
        facefab.operators.pose_source gives it), or None: the V-kps stay still (the official "fix_face").
        `steps`, `guidance_scale`: None takes pipeline.json's sampling settings."""
        size, sampling = self.size, self.config["sampling"]
        if reference.shape != (size, size, 3):
            raise ValueError(f"reference must be ({size}, {size}, 3) uint8, got {reference.shape}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if pose is not None and len(pose) != num_frames:
            raise ValueError(f"pose has {len(pose)} rows for {num_frames} frames")
        steps = int(steps or sampling["steps"])
        scale = float(sampling["guidance_scale"] if guidance_scale is None else guidance_scale)
        device, dtype = self.device, self.dtype
        guide = scale > 1.0

        kps = posed_v_kps(points, size, pose, num_frames)
        features = torch.cat([self.net.v_kps_guider(torch.from_numpy(kps_images(kps[i:i + GUIDER_CHUNK], size))
                                                    .to(device, dtype)) for i in range(0, num_frames, GUIDER_CHUNK)])
        features = features.transpose(0, 1)[None]  # (1, C0, T, h, w)
        tokens = speech_tokens(self.config, audio, fps, num_frames, self.audio_encoder)
        context = self.net.audio_context(torch.from_numpy(tokens).to(device))
        reference_latents = self.codec.encode(to_unit(reference[None], device, dtype))
        if guide:  # batch [unconditional, conditional]: the first one's reference tokens are zero
            self.net.write_reference(reference_latents.repeat(2, 1, 1, 1), keep=torch.tensor([0.0, 1.0]))
        else:
            self.net.write_reference(reference_latents)

        def predict(latents: torch.Tensor, t: torch.Tensor, frames: slice) -> torch.Tensor:
            feats, ctx = features[:, :, frames], context[frames]
            if guide:
                latents = torch.cat([latents, latents])
                feats = torch.cat([torch.zeros_like(feats), feats])
                ctx = torch.cat([torch.zeros_like(ctx), ctx])
            out = self.net.denoise(latents, t, feats, ctx).float()
            if guide:
                uncond, cond = out.chunk(2)
                return guided(cond, uncond, scale)
            return out

        scheduler = make_scheduler(self.config["scheduler"])
        h = size // self.codec.factor
        latents = initial_noise((1, self.codec.channels, num_frames, h, h), seed, device, torch.float32, scheduler)
        try:
            latents = sample_overlapping(predict, scheduler, latents, steps, int(sampling["context_frames"]),
                                         int(sampling["context_overlap"]), progress)
        finally:
            self.net.bank.clear()
        return to_uint8(self.codec.decode(latents[0].transpose(0, 1).to(dtype)))


__all__ = ["VExpressNet", "VExpressPipeline", "build_parts", "kps_conditioning", "load_parts", "mel_tokens",
           "read_config", "save_parts", "set_audio_attention_weight", "speech_tokens", "wav2vec2_windows"]

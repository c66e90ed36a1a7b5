"""Hallo configurations: the paper (released checkpoint) sizes and a tiny one for tests and CPU runs.

A config is a plain dict, stored as the pipeline folder's `pipeline.json` next to the parts:

- `size`: the square resolution of the crops taken and made.
- `unet`: the spatial layout (`UNet2DConditionModel` kwargs) of the reference net and the denoiser;
  `motion_preset` the AnimateDiff temporal modules of the denoiser (facefab.models.shared.motion_unet).
- `face_locator`, `image_proj`, `audio_proj`: the constructor kwargs of those parts (official names).
- `audio`: the speech features. "mel": facefab's log-mel (shared.speech.speech_windows): for every
  video frame the `audio_proj.seq_len` frames around it, `audio_proj.blocks` mel frames of 80 channels
  each, standardised by `mel_mean` / `mel_std`. "wav2vec2": the official features (all 12 hidden states
  of wav2vec2-base-960h, interpolated to one per video frame), used by converted official checkpoints,
  which bring `audio_encoder/`.
- `audio_block`: the denoiser's audio modules (shared.motion_unet): "hallo" (the official audio module:
  self-attention, a cross-attention per region behind a zero conv, feed-forward; what the released
  net.pth holds) or "simple" (one cross-attention with a learned scale per region; folders exported
  before the "hallo" block existed, whose pipeline.json lacks the key).
- `masks`: the region masks made from the reference mesh (official values): the face box expanded
  `face_expand` times (the face locator's input), the lip box `lip_expand` times; both blurred at
  `mask_size` px with Gaussian kernels `face_blur` / `lip_blur` into the pose / face / lip weights of
  the audio attention.
- `latent`: {"type": "vae"} (SD's VAE in `vae/`) or {"type": "pixel", "factor": F}.
- `scheduler`: DDIM overrides of shared.sampling.DEFAULT_SCHEDULER (already Hallo's: linear betas,
  zero terminal SNR, v-prediction, trailing timesteps).
- `sampling`: steps, guidance scale, frames per window and motion frames carried between windows,
  `region_weights` (pose, face, lip: the official pose_weight / face_weight / lip_weight).
"""

from __future__ import annotations

import copy

from ..shared.motion_unet import AUDIO_BLOCKS, unet2d_config

REGIONS = ("pose", "face", "lip")  # order of the region masks (the official full / face / lip masks)
FACE_EMBEDDING_DIM = 512  # insightface ArcFace (buffalo_l) embedding

MEL_AUDIO = {"features": "mel", "mel_mean": -4.0, "mel_std": 4.0}
WAV2VEC2_AUDIO = {"features": "wav2vec2"}
MASKS = {"face_expand": 1.2, "lip_expand": 2.0, "mask_size": 64, "face_blur": 51, "lip_blur": 31}

_PAPER: dict = {
    "size": 512,
    "unet": unet2d_config("sd15"),
    "motion_preset": "sd15",
    # scripts/inference.py: FaceLocator(conditioning_embedding_channels=320), default block_out_channels
    "face_locator": {"conditioning_embedding_channels": 320, "conditioning_channels": 3,
                     "block_out_channels": [16, 32, 64, 128]},
    "image_proj": {"cross_attention_dim": 768, "clip_embeddings_dim": FACE_EMBEDDING_DIM,
                   "clip_extra_context_tokens": 4},
    # the official AudioProjModel sizes, with facefab's mel features as its input (4 mel frames per video
    # frame at 25 fps, 80 channels) instead of 12 wav2vec2 layers x 768
    "audio_proj": {"seq_len": 5, "blocks": 4, "channels": 80, "intermediate_dim": 512, "output_dim": 768,
                   "context_tokens": 32},
    "audio": MEL_AUDIO,
    "audio_block": "hallo",
    "masks": MASKS,
    "latent": {"type": "vae"},
    "scheduler": {},
    # configs/inference/default.yaml
    "sampling": {"steps": 40, "guidance_scale": 3.5, "clip_frames": 16, "motion_frames": 2,
                 "region_weights": [1.0, 1.0, 1.0]},
}

_TINY: dict = {
    "size": 64,
    "unet": unet2d_config("tiny"),
    "motion_preset": "tiny",
    "face_locator": {"conditioning_embedding_channels": 32, "conditioning_channels": 3,
                     "block_out_channels": [8, 16, 32]},
    "image_proj": {"cross_attention_dim": 32, "clip_embeddings_dim": FACE_EMBEDDING_DIM,
                   "clip_extra_context_tokens": 4},
    "audio_proj": {"seq_len": 5, "blocks": 4, "channels": 80, "intermediate_dim": 64, "output_dim": 32,
                   "context_tokens": 8},
    "audio": MEL_AUDIO,
    "audio_block": "hallo",
    "masks": MASKS,
    "latent": {"type": "pixel", "factor": 4},
    "scheduler": {},
    "sampling": {"steps": 8, "guidance_scale": 2.0, "clip_frames": 16, "motion_frames": 2,
                 "region_weights": [1.0, 1.0, 1.0]},
}


def paper(**overrides) -> dict:
    return {**copy.deepcopy(_PAPER), **overrides}


def tiny(**overrides) -> dict:
    return {**copy.deepcopy(_TINY), **overrides}


def official(**overrides) -> dict:
    """The released checkpoint's config (pretrained_models/hallo/net.pth): the paper sizes with the
    official wav2vec2 speech features (5 frames x 12 layers x 768 channels per video frame)."""
    config = paper()
    config["audio"] = dict(WAV2VEC2_AUDIO)
    config["audio_proj"].update(blocks=12, channels=768)
    return {**config, **overrides}


def latent_factor(config: dict) -> int:
    """Pixels per latent cell: the pixel codec's factor, or SD's VAE (8)."""
    latent = config["latent"]
    return int(latent["factor"]) if latent["type"] == "pixel" else 8


def check(config: dict) -> dict:
    """`config` if its parts fit together, else ValueError naming the mismatch."""
    missing = set(_PAPER) - set(config) - {"audio_block"}  # optional: "simple" when absent
    if missing:
        raise ValueError(f"hallo config lacks {sorted(missing)}")
    size, factor, unet = int(config["size"]), latent_factor(config), config["unet"]
    if config["latent"]["type"] not in ("vae", "pixel"):
        raise ValueError(f"latent.type must be 'vae' or 'pixel', got {config['latent']['type']!r}")
    if size % factor:
        raise ValueError(f"size {size} is not a multiple of the latent factor {factor}")
    locator = config["face_locator"]
    if 2 ** (len(locator["block_out_channels"]) - 1) != factor:
        raise ValueError(f"face_locator downsamples {2 ** (len(locator['block_out_channels']) - 1)}x but the "
                         f"latents are {factor}x smaller than the image")
    if locator["conditioning_embedding_channels"] != unet["block_out_channels"][0]:
        raise ValueError("face_locator.conditioning_embedding_channels must be the UNet's first block width "
                         f"({unet['block_out_channels'][0]}): its features are added after conv_in")
    if config["image_proj"]["cross_attention_dim"] != unet["cross_attention_dim"]:
        raise ValueError("image_proj.cross_attention_dim must be the UNet's cross_attention_dim")
    if config.get("audio_block", "simple") not in AUDIO_BLOCKS:
        raise ValueError(f"audio_block must be one of {AUDIO_BLOCKS}, got {config['audio_block']!r}")
    if config["audio"]["features"] not in ("mel", "wav2vec2"):
        raise ValueError(f"audio.features must be 'mel' or 'wav2vec2', got {config['audio']['features']!r}")
    if config["audio"]["features"] == "mel" and config["audio_proj"]["channels"] != 80:
        raise ValueError("mel speech features have 80 channels (audio_proj.channels)")
    sampling = config["sampling"]
    if len(sampling["region_weights"]) != len(REGIONS):
        raise ValueError(f"sampling.region_weights needs {len(REGIONS)} values ({', '.join(REGIONS)})")
    if int(sampling["clip_frames"]) < 1 or int(sampling["motion_frames"]) < 0:
        raise ValueError("sampling.clip_frames must be >= 1 and motion_frames >= 0")
    return config


__all__ = ["FACE_EMBEDDING_DIM", "REGIONS", "check", "latent_factor", "official", "paper", "tiny"]

"""V-Express configurations: the paper (released checkpoint) sizes and a tiny one for tests and CPU runs.

One config is a plain dict, stored as the pipeline folder's `pipeline.json` next to the parts:

- `size`: the square resolution of the crops taken and made.
- `unet`: the spatial layout (`UNet2DConditionModel` kwargs) of the reference net and the denoiser;
  `motion_preset` the AnimateDiff temporal modules of the denoiser (facefab.models.shared.motion_unet).
- `v_kps_guider`, `audio_projection`: the constructor kwargs of those parts.
- `audio`: the speech features. "mel": facefab's log-mel, the mel frames of the 2*pad_frames+1 video
  frames around each frame (`mel_per_frame` each) as tokens of 80 channels; "wav2vec2": the official
  features (wav2vec2-base-960h last hidden state resampled to 2 per video frame, 2*(2*pad_frames+1)
  tokens of 768), used by converted official checkpoints, which bring `audio_encoder/`.
- `reference_attention`: how the denoiser reads the reference net (shared.reference_attention):
  "separate" (the official: a reference attention `attn1_5` of its own after every spatial
  self-attention, scaled by `sampling.reference_attention_weight`) or "joined" (the reference tokens
  join `attn1`'s keys/values, Hallo's form; folders exported before "separate" existed, whose denoiser
  config lacks the key). It sets what a fresh denoiser is built with; a loaded one keeps its own.
- `latent`: {"type": "vae"} (SD's VAE in `vae/`) or {"type": "pixel", "factor": F}.
- `scheduler`: DDIM settings (the official inference_v2.yaml: scaled-linear betas, zero terminal SNR,
  v-prediction, trailing timesteps); `sampling`: steps, guidance, context windows, audio and reference
  attention weights (inference only; training runs at 1).
"""

from __future__ import annotations

import copy

from ..shared.motion_unet import unet2d_config
from ..shared.reference_attention import MODES as REFERENCE_MODES

# facefab log-mel tokens, standardised by fixed constants (speech log-mel power is about -4 +- 4)
MEL_AUDIO = {"features": "mel", "pad_frames": 2, "mel_per_frame": 4, "mel_mean": -4.0, "mel_std": 4.0}
SCHEDULER = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
             "clip_sample": False, "steps_offset": 1}

_PAPER: dict = {
    "size": 512,
    "unet": unet2d_config("sd15"),
    "motion_preset": "sd15",
    # inference.py: VKpsGuider(320, block_out_channels=(16, 32, 96, 256))
    "v_kps_guider": {"conditioning_embedding_channels": 320, "conditioning_channels": 3,
                     "block_out_channels": [16, 32, 96, 256]},
    # inference.py: dim = output_dim = cross_attention_dim, depth 4, 12 heads of 64, 2*pad+1 queries
    "audio_projection": {"dim": 768, "depth": 4, "dim_head": 64, "heads": 12, "num_queries": 5,
                         "embedding_dim": 80, "output_dim": 768, "ff_mult": 4, "max_seq_len": 20},
    "audio": MEL_AUDIO,
    "reference_attention": "separate",
    "latent": {"type": "vae"},
    "scheduler": SCHEDULER,
    # inference.py defaults
    "sampling": {"steps": 25, "guidance_scale": 3.5, "context_frames": 24, "context_overlap": 4,
                 "audio_attention_weight": 3.0, "reference_attention_weight": 0.95},
}

_TINY: dict = {
    "size": 64,
    "unet": unet2d_config("tiny"),
    "motion_preset": "tiny",
    "v_kps_guider": {"conditioning_embedding_channels": 32, "conditioning_channels": 3,
                     "block_out_channels": [8, 16, 32]},
    "audio_projection": {"dim": 32, "depth": 1, "dim_head": 8, "heads": 4, "num_queries": 5,
                         "embedding_dim": 80, "output_dim": 32, "ff_mult": 2, "max_seq_len": 20},
    "audio": MEL_AUDIO,
    "reference_attention": "separate",
    "latent": {"type": "pixel", "factor": 4},
    "scheduler": SCHEDULER,
    "sampling": {"steps": 6, "guidance_scale": 2.0, "context_frames": 24, "context_overlap": 4,
                 "audio_attention_weight": 1.0, "reference_attention_weight": 1.0},
}

# what a converted official checkpoint uses instead of facefab's mel features
WAV2VEC2_AUDIO = {"features": "wav2vec2", "pad_frames": 2, "tokens_per_frame": 2}


def paper(**overrides) -> dict:
    return {**copy.deepcopy(_PAPER), **overrides}


def tiny(**overrides) -> dict:
    return {**copy.deepcopy(_TINY), **overrides}


def official(**overrides) -> dict:
    """The released checkpoint's config: the paper sizes with wav2vec2 speech features (768 channels,
    10 tokens per frame) and the official pipeline's sampling defaults."""
    config = paper()
    config["audio"] = dict(WAV2VEC2_AUDIO)
    config["audio_projection"].update(embedding_dim=768, max_seq_len=2 * (2 * WAV2VEC2_AUDIO["pad_frames"] + 1))
    return {**config, **overrides}


def audio_tokens(config: dict) -> tuple[int, int]:
    """(tokens per frame, channels) of the speech features `config["audio"]` describes."""
    audio = config["audio"]
    window = 2 * int(audio["pad_frames"]) + 1
    if audio["features"] == "mel":
        return window * int(audio["mel_per_frame"]), 80
    if audio["features"] == "wav2vec2":
        return window * int(audio["tokens_per_frame"]), int(config["audio_projection"]["embedding_dim"])
    raise ValueError(f"unknown audio features {audio['features']!r} (mel or wav2vec2)")


def check(config: dict) -> dict:
    """`config`, or ValueError when its parts disagree (the guider must land on the latent grid with the
    UNet's first width; the projection must take the audio tokens and give the cross-attention width)."""
    guider, unet, proj = config["v_kps_guider"], config["unet"], config["audio_projection"]
    factor = 8 if config["latent"]["type"] == "vae" else int(config["latent"]["factor"])
    if 2 ** (len(guider["block_out_channels"]) - 1) != factor:
        raise ValueError(f"v_kps_guider downsamples {2 ** (len(guider['block_out_channels']) - 1)}x but the "
                         f"latents are {factor}x smaller than the image")
    if guider["conditioning_embedding_channels"] != unet["block_out_channels"][0]:
        raise ValueError("v_kps_guider.conditioning_embedding_channels must be the UNet's first block width")
    if proj["output_dim"] != unet["cross_attention_dim"]:
        raise ValueError("audio_projection.output_dim must be the UNet's cross_attention_dim")
    tokens, channels = audio_tokens(config)
    if (proj["max_seq_len"], proj["embedding_dim"]) != (tokens, channels):
        raise ValueError(f"audio_projection takes {proj['max_seq_len']} tokens of {proj['embedding_dim']}, "
                         f"the audio features are {tokens} of {channels}")
    if config["size"] % factor:
        raise ValueError(f"size {config['size']} is not a multiple of the latent factor {factor}")
    if config.get("reference_attention", "separate") not in REFERENCE_MODES:
        raise ValueError(f"reference_attention must be one of {REFERENCE_MODES}, got {config['reference_attention']!r}")
    return config


__all__ = ["MEL_AUDIO", "SCHEDULER", "WAV2VEC2_AUDIO", "audio_tokens", "check", "official", "paper", "tiny"]

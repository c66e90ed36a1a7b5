"""Follow-Your-Emoji configurations: the paper (released checkpoint) sizes and a tiny one for tests and CPU.

One config is a plain dict, stored as the pipeline folder's `pipeline.json` next to the parts:

- `size`: the square resolution of the crops taken and made (the official 512).
- `unet`: the spatial layout (`UNet2DConditionModel` kwargs) of the reference net and the denoiser (SD1.5
  from sd-image-variations: cross-attention to 768-wide CLIP image tokens); `motion_preset` the AnimateDiff
  temporal modules (the official configs/infer.yaml: 8 heads, 32 positions, mid block too).
- `lmk_guider`: the official `Guider(conditioning_embedding_channels=320, block_out_channels=(16, 32, 96,
  256))` of infer.py.
- `landmarks`: how the expression-aware landmark images are drawn (models/follow_your_emoji/landmarks.py).
- `latent`: {"type": "vae"} (SD's VAE in `vae/`) or {"type": "pixel", "factor": F}.
- `scheduler`: DDIM as infer.py (scaled-linear betas; enable_zero_snr: zero terminal SNR, trailing
  timesteps, v-prediction); `sampling`: steps (infer.py 30), guidance (3.5), the window (`context_frames`,
  the official video_length 16), `long_video` ("progressive": the paper's keyframes then in-between
  windows with known ends; "overlapping": windows averaged every step, the official context scheduler)
  and `context_overlap` (overlapping only).
"""

from __future__ import annotations

import copy

from ..shared.motion_unet import unet2d_config

SCHEDULER = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
             "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
             "clip_sample": False, "steps_offset": 1}
LONG_VIDEO = ("progressive", "overlapping")

_PAPER: dict = {
    "size": 512,
    "unet": unet2d_config("sd15"),
    "motion_preset": "sd15",
    "lmk_guider": {"conditioning_embedding_channels": 320, "conditioning_channels": 3,
                   "block_out_channels": [16, 32, 96, 256]},
    "landmarks": {"iris_point": True, "forehead_edge": False},
    "latent": {"type": "vae"},
    "scheduler": SCHEDULER,
    "sampling": {"steps": 30, "guidance_scale": 3.5, "context_frames": 16, "context_overlap": 4,
                 "long_video": "progressive"},
}

_TINY: dict = {
    "size": 64,
    "unet": unet2d_config("tiny"),
    "motion_preset": "tiny",
    "lmk_guider": {"conditioning_embedding_channels": 32, "conditioning_channels": 3,
                   "block_out_channels": [8, 16, 32]},
    "landmarks": {"iris_point": True, "forehead_edge": False},
    "latent": {"type": "pixel", "factor": 4},
    "scheduler": SCHEDULER,
    "sampling": {"steps": 6, "guidance_scale": 2.0, "context_frames": 8, "context_overlap": 2,
                 "long_video": "progressive"},
}


def paper(**overrides) -> dict:
    return {**copy.deepcopy(_PAPER), **overrides}


def tiny(**overrides) -> dict:
    return {**copy.deepcopy(_TINY), **overrides}


def official(**overrides) -> dict:
    """The released checkpoint's config (the paper sizes, SD VAE latents)."""
    return paper(**overrides)


def latent_factor(config: dict) -> int:
    return 8 if config["latent"]["type"] == "vae" else int(config["latent"]["factor"])


def check(config: dict) -> dict:
    """`config`, or ValueError when its parts disagree (the guider must land on the latent grid with the
    UNet's first width; the window must hold at least the two known ends of an in-between window)."""
    guider, unet, sampling = config["lmk_guider"], config["unet"], config["sampling"]
    factor = latent_factor(config)
    if 2 ** (len(guider["block_out_channels"]) - 1) != factor:
        raise ValueError(f"lmk_guider downsamples {2 ** (len(guider['block_out_channels']) - 1)}x but the "
                         f"latents are {factor}x smaller than the image")
    if guider["conditioning_embedding_channels"] != unet["block_out_channels"][0]:
        raise ValueError("lmk_guider.conditioning_embedding_channels must be the UNet's first block width")
    if config["size"] % factor:
        raise ValueError(f"size {config['size']} is not a multiple of the latent factor {factor}")
    if sampling.get("long_video", "progressive") not in LONG_VIDEO:
        raise ValueError(f"sampling.long_video must be one of {LONG_VIDEO}, got {sampling['long_video']!r}")
    if int(sampling["context_frames"]) < 3:
        raise ValueError("sampling.context_frames must be >= 3 (two known ends and a frame between)")
    return config


__all__ = ["LONG_VIDEO", "SCHEDULER", "check", "latent_factor", "official", "paper", "tiny"]

"""MegActor configurations: the released checkpoint's sizes (`paper()` / `official()`) and a tiny one for
tests and CPU (`tiny()`).

One config is a plain dict, stored as the pipeline folder's `pipeline.json` next to the parts:

- `size`: the square resolution of the crops taken and made (the official 512).
- `unet`: the spatial layout (`UNet2DConditionModel` kwargs) of the appearance encoder (the official
  AppearanceEncoderModel, MagicAnimate's ReferenceNet) and of the denoiser's spatial layers (SD1.5,
  cross-attention to 768-wide CLIP image tokens). The denoiser's own `conv_in` is wider (`denoiser_in`):
  noisy latents, the reference's latents, the background mask and the driving features concatenated (the
  official concat_noise_image_type "origin": 4 + 4 + 1 + 4 = 13 channels).
- `motion_preset` / `motion_mid_block`: the AnimateDiff temporal modules (the official
  configs/inference/inference.yaml: Vanilla, 8 heads, 32 positions, resolutions 1-8, none in the mid block).
- `condition_input_layer`: the official driving-video encoder (`unet.condition_input_layer`, ConvInputLayer):
  `channels` of its spatial conv stages (16, 32, 64, 128; all but the last halve the resolution),
  `conditioning_embedding_channels` (the latent channels), and the AdaLN fusion of the reference image
  (`use_refer_ada`): `refer_channels` of its stride-2 stages (4 ... 512, down to one pixel) and
  `refer_hidden` (256).
- `image_encoder`: what the denoiser and the appearance encoder cross-attend to in place of SD's text tokens:
  {"type": "clip"} (a CLIPVisionModelWithProjection in the folder's image_encoder/, on the reference's
  background as the official clip_image_type "background": every projected token) or {"type": "conv",
  "tokens": T, "channels": [...]} (a small trained encoder, part `background_encoder`, for configs without
  CLIP weights; the tiny one).
- `fusion_blocks`: where the appearance encoder's tokens join the denoiser's self-attention: "midup" (the
  official ReferenceAttentionControl default: mid and up blocks) or "full".
- `driving`: the official face-region preprocessing of the driving frames (models/megactor/driving.py):
  `top_margin` / `bottom_margin` of the kept face box, `patch_div` of the contour-preserving patches.
- `latent`: {"type": "vae"} (SD's VAE in `vae/`) or {"type": "pixel", "factor": F}.
- `scheduler`: DDIM, epsilon prediction (train.py's MSE to the noise); `sampling`: steps (25), guidance
  (4.5), the context window (16 frames, overlap 8: the official inference.yaml `context`).
"""

from __future__ import annotations

import copy

from ..follow_your_emoji.config import latent_factor
from ..shared.motion_unet import unet2d_config

SCHEDULER = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
             "prediction_type": "epsilon", "rescale_betas_zero_snr": False, "timestep_spacing": "leading",
             "clip_sample": False, "steps_offset": 1, "set_alpha_to_one": False}
FUSION_BLOCKS = ("midup", "full")
IMAGE_ENCODERS = ("clip", "conv")
DRIVING = {"top_margin": 0.4, "bottom_margin": 0.1, "patch_div": 8}

_PAPER: dict = {
    "size": 512,
    "unet": unet2d_config("sd15"),
    "motion_preset": "sd15",
    "motion_mid_block": False,
    "condition_input_layer": {"channels": [16, 32, 64, 128], "conditioning_embedding_channels": 4,
                              "use_refer_ada": True, "refer_channels": [4, 8, 16, 32, 64, 128, 256, 512],
                              "refer_hidden": 256},
    "image_encoder": {"type": "clip"},
    "fusion_blocks": "midup",
    "driving": DRIVING,
    "latent": {"type": "vae"},
    "scheduler": SCHEDULER,
    "sampling": {"steps": 25, "guidance_scale": 4.5, "context_frames": 16, "context_overlap": 8},
}

_TINY: dict = {
    "size": 64,
    "unet": unet2d_config("tiny"),
    "motion_preset": "tiny",
    "motion_mid_block": False,
    "condition_input_layer": {"channels": [8, 16, 32], "conditioning_embedding_channels": 3,
                              "use_refer_ada": True, "refer_channels": [4, 8, 16, 32], "refer_hidden": 32},
    "image_encoder": {"type": "conv", "tokens": 16, "channels": [8, 16, 32]},
    "fusion_blocks": "midup",
    "driving": DRIVING,
    "latent": {"type": "pixel", "factor": 4},
    "scheduler": SCHEDULER,
    "sampling": {"steps": 6, "guidance_scale": 2.0, "context_frames": 16, "context_overlap": 8},
}


def _preset(base: dict):
    def make(**overrides) -> dict:
        return {**copy.deepcopy(base), **overrides}
    return make


paper, tiny = _preset(_PAPER), _preset(_TINY)
official = paper  # the released checkpoint's config: the paper sizes, SD VAE latents, a CLIP image encoder


def latent_channels(config: dict) -> int:
    return int(config["unet"]["in_channels"])


def denoiser_in(config: dict) -> int:
    """The denoiser's conv_in width: noisy latents + reference latents + background mask + driving features."""
    return 2 * latent_channels(config) + 1 + int(config["condition_input_layer"]["conditioning_embedding_channels"])


def check(config: dict) -> dict:
    """`config`, or ValueError when its parts disagree (the driving encoder must land on the latent grid,
    the AdaLN path must reduce the image to one pixel, the window must hold its overlap)."""
    factor, layer = latent_factor(config), config["condition_input_layer"]
    if 2 ** (len(layer["channels"]) - 1) != factor:
        raise ValueError(f"condition_input_layer downsamples {2 ** (len(layer['channels']) - 1)}x but the latents "
                         f"are {factor}x smaller than the image")
    if config["size"] % factor:
        raise ValueError(f"size {config['size']} is not a multiple of the latent factor {factor}")
    if layer.get("use_refer_ada", True):
        steps = 2 ** (len(layer["refer_channels"]) - 1)
        if config["size"] % steps or config["size"] // steps < 1:
            raise ValueError(f"size {config['size']} is not a multiple of the AdaLN path's {steps}x reduction")
    if config.get("fusion_blocks", "midup") not in FUSION_BLOCKS:
        raise ValueError(f"fusion_blocks must be one of {FUSION_BLOCKS}, got {config['fusion_blocks']!r}")
    kind = config["image_encoder"].get("type")
    if kind not in IMAGE_ENCODERS:
        raise ValueError(f"image_encoder.type must be one of {IMAGE_ENCODERS}, got {kind!r}")
    sampling = config["sampling"]
    if not 0 <= int(sampling["context_overlap"]) < int(sampling["context_frames"]):
        raise ValueError("sampling.context_overlap must be in [0, context_frames)")
    return config


__all__ = ["DRIVING", "FUSION_BLOCKS", "IMAGE_ENCODERS", "SCHEDULER", "check", "denoiser_in", "latent_channels",
           "latent_factor", "official", "paper", "tiny"]

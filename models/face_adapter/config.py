"""Face-Adapter configurations: the paper's sizes (`paper()`, SD1.5) and a tiny one for tests and CPU (`tiny()`).

One config is a plain dict, stored as the pipeline folder's `pipeline.json` next to the parts:

- `size`: the square resolution the model works at (the official test_image_size 512); the pipeline resizes
  crops to it and back.
- `unet`: the denoiser's layout (`UNet2DConditionModel` kwargs; SD1.5 with 768-wide cross-attention).
  `train_unet`: whether training updates it. The paper freezes SD1.5's UNet (False; the training option
  `unet` names the SD folder it is read from); the tiny config has no SD weights and trains a fresh one.
- `controlnet`: the Attribute Controller's spatial branch, a diffusers `ControlNetModel` built from the UNet
  (the official `controlnet/`); `conditioning_embedding_out_channels` downsample the spatial condition
  to the latent grid (2^(len-1) == the latent factor).
- `identity`: the Identity Encoder. `backbone` "conv": `FaceIdEncoder`, a small CNN trained with the system
  over the source crop (weight-free); "arcface": a TorchScript face-recognition model at `arcface_path`
  ((B, 3, input_size, input_size) in [-1, 1] -> (B, id_dim), frozen; the official uses insightface's
  glint360k ArcFace on the 5-point-aligned crop at 128 px). `tokens` / `num_layers` / `dim_feedforward` of
  the ID2Token transformer (official: 77 tokens, 3 decoder layers).
- `attribute`: the Attribute Controller's attribute template. `encoder` "clip": a CLIP vision model in the
  folder's image_encoder/ (the official ViT-H, 1280-wide last_hidden_state); "conv": megactor's small
  `BackgroundEncoder` trained with the system (`conv_tokens`, `channels`, `hidden` wide). Its tokens go
  through Image2Token (`tokens`, `num_layers`) to the ControlNet's cross-attention.
- `area`: the Spatial Condition Generator's masks: `channels` of the Adapting Area Predictor (reenactment:
  source image + landmark image -> the region that changes), `dilate` (the face hull grown by this fraction
  of the size: the adapting area of a swap) and `feather` (the blend mask's soft outward edge).
- `landmarks`: `radius` of the rendered landmark dots, as a fraction of the size (the official 2 px at 256).
- `latent`: {"type": "vae"} (SD's VAE in `vae/`) or {"type": "pixel", "factor": F}.
- `scheduler`: SD1.5's (scaled-linear betas, epsilon prediction) as DDIM; `sampling`: steps and guidance
  (the official 25 steps, guidance 5.0). The tiny config (a UNet trained from scratch, in pixel space) uses
  `TINY_SCHEDULER` instead: the same betas with v-prediction, zero terminal SNR and trailing timesteps. With
  epsilon prediction the clean image is recovered as (x_t - sqrt(1 - a) eps) / sqrt(a), which multiplies a
  small net's noise error by up to 1 / sqrt(a) ~ 15 at the first sampling steps: DDIM then commits to
  amplified noise (saturated colour blobs in the face area) that the low-noise steps keep as content.
"""

from __future__ import annotations

import copy

from ..follow_your_emoji.config import latent_factor
from ..megactor.config import SCHEDULER  # SD1.5's scheduler (scaled-linear betas, epsilon) as DDIM
from ..shared.motion_unet import unet2d_config

# SD1.5's betas with v-prediction, zero terminal SNR and trailing timesteps: for a denoiser trained from scratch
# (the tiny config), where epsilon prediction's low-SNR error amplification ruins the samples (see above)
TINY_SCHEDULER = {**SCHEDULER, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                  "timestep_spacing": "trailing"}
BACKBONES = ("conv", "arcface")
ATTRIBUTE_ENCODERS = ("conv", "clip")
MODES = ("swap", "reenact")

_PAPER: dict = {
    "size": 512,
    "unet": unet2d_config("sd15"),
    "train_unet": False,
    "controlnet": {"conditioning_embedding_out_channels": [16, 32, 96, 256]},
    "identity": {"backbone": "conv", "arcface_path": "", "id_dim": 512, "input_size": 128,
                 "channels": [32, 64, 128, 256], "tokens": 77, "num_layers": 3, "dim_feedforward": 2048},
    "attribute": {"encoder": "clip", "hidden": 1280, "conv_tokens": 64, "channels": [64, 128, 256, 512],
                  "tokens": 77, "num_layers": 3, "dim_feedforward": 2048},
    "area": {"channels": [32, 64, 128, 256], "dilate": 0.06, "feather": 0.03},
    "landmarks": {"radius": 2 / 256},
    "latent": {"type": "vae"},
    "scheduler": SCHEDULER,
    "sampling": {"steps": 25, "guidance_scale": 5.0},
}

_TINY: dict = {
    "size": 64,
    "unet": unet2d_config("tiny"),
    "train_unet": True,
    "controlnet": {"conditioning_embedding_out_channels": [8, 16, 32]},
    "identity": {"backbone": "conv", "arcface_path": "", "id_dim": 512, "input_size": 64, "channels": [8, 16, 32],
                 "tokens": 8, "num_layers": 1, "dim_feedforward": 64},
    "attribute": {"encoder": "conv", "hidden": 32, "conv_tokens": 16, "channels": [8, 16, 32], "tokens": 8,
                  "num_layers": 1, "dim_feedforward": 64},
    "area": {"channels": [8, 16, 32], "dilate": 0.06, "feather": 0.03},
    "landmarks": {"radius": 2 / 256},
    "latent": {"type": "pixel", "factor": 4},
    "scheduler": TINY_SCHEDULER,
    "sampling": {"steps": 6, "guidance_scale": 2.0},
}


def paper(**overrides) -> dict:
    return {**copy.deepcopy(_PAPER), **overrides}


def tiny(**overrides) -> dict:
    return {**copy.deepcopy(_TINY), **overrides}


def width(config: dict) -> int:
    """The UNet's cross-attention width: what the identity and attribute tokens are."""
    return int(config["unet"]["cross_attention_dim"])


def check(config: dict) -> dict:
    """`config`, or ValueError when its parts disagree."""
    factor = latent_factor(config)
    down = 2 ** (len(config["controlnet"]["conditioning_embedding_out_channels"]) - 1)
    if down != factor:
        raise ValueError(f"controlnet conditioning embedding downsamples {down}x but the latents are {factor}x smaller")
    if config["size"] % factor:
        raise ValueError(f"size {config['size']} is not a multiple of the latent factor {factor}")
    identity, attribute = config["identity"], config["attribute"]
    if identity["backbone"] not in BACKBONES:
        raise ValueError(f"identity.backbone must be one of {BACKBONES}, got {identity['backbone']!r}")
    if identity["backbone"] == "arcface" and not identity.get("arcface_path"):
        raise ValueError("identity.backbone 'arcface' needs identity.arcface_path (a TorchScript face-ID model)")
    if attribute["encoder"] not in ATTRIBUTE_ENCODERS:
        raise ValueError(f"attribute.encoder must be one of {ATTRIBUTE_ENCODERS}, got {attribute['encoder']!r}")
    area = 2 ** (len(config["area"]["channels"]) - 1)
    if config["size"] % area:
        raise ValueError(f"size {config['size']} is not a multiple of the area predictor's {area}x reduction")
    return config


__all__ = ["ATTRIBUTE_ENCODERS", "BACKBONES", "MODES", "SCHEDULER", "TINY_SCHEDULER", "check", "latent_factor",
           "paper", "tiny", "width"]

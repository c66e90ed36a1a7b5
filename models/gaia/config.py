"""GAIA model configurations: paper-size defaults and tiny ones for tests and CPU smoke runs.

Each dict is the keyword arguments of a model's constructor (what `save_pretrained` stores in
config.json). The paper (arXiv 2311.15230) trains at 256 px with a Stable-Diffusion-style autoencoder
and a Conformer diffusion model; where it gives no number, the value here is ours.
"""

from __future__ import annotations

# Stage 1: appearance encoder (frame j) + motion encoder (landmark image of frame i) -> decoder -> frame i.
VAE_DEFAULTS: dict = {
    "image_size": 256,
    "appearance_channels": (64, 128, 256, 256),  # SD-style encoder levels: 8x down -> 32x32 appearance
    "appearance_latent_channels": 16,
    "motion_channels": (32, 64, 128, 128, 256, 256),  # 32x down -> an 8x8 motion latent
    "motion_latent_channels": 4,  # 8 * 8 * 4 = 256 numbers per frame: too few to carry appearance
    "decoder_channels": (64, 128, 256, 256),
    "layers_per_block": 2,
    "norm_num_groups": 32,
}

# Stage 2: speech (+ pose, + the reference's motion latent) -> a sequence of motion latents.
MOTION_DEFAULTS: dict = {
    "motion_dim": 256,  # numbers per frame of the VAE's motion latent (channels x h x w)
    "n_mels": 80,  # log-mel bins (AudioFeatures defaults: 25 ms window, 10 ms hop, 16 kHz)
    "mel_window": 17,  # mel frames around each video frame (AudioFeatures context 8 -> 2*8+1)
    "d_model": 512,
    "num_layers": 8,
    "num_heads": 8,
    "ff_mult": 4,
    "conv_kernel": 15,  # depthwise temporal convolution, frames
    "dropout": 0.1,
    "mel_mean": -6.0,  # fixed standardisation of natural-log mel power (as MyTalk)
    "mel_std": 4.0,
    "pose_scale": 30.0,  # degrees -> model units
    "window": 80,  # frames the model sees at once: training samples and inference windows
}

_TINY_VAE = {"image_size": 64, "appearance_channels": (16, 32, 32), "appearance_latent_channels": 8,
             "motion_channels": (8, 16, 16, 32, 32), "motion_latent_channels": 4, "decoder_channels": (16, 32, 32),
             "layers_per_block": 1, "norm_num_groups": 8}
_TINY_MOTION = {"motion_dim": 64, "d_model": 64, "num_layers": 2, "num_heads": 2, "ff_mult": 2, "conv_kernel": 5,
                "dropout": 0.0, "window": 16}


def motion_dim(vae: dict) -> int:
    """Numbers per frame of a VAE config's motion latent."""
    side = vae["image_size"] // 2 ** (len(vae["motion_channels"]) - 1)
    return vae["motion_latent_channels"] * side * side


def vae_config(tiny: bool = False, **overrides) -> dict:
    return {**VAE_DEFAULTS, **(_TINY_VAE if tiny else {}), **overrides}


def motion_config(tiny: bool = False, **overrides) -> dict:
    return {**MOTION_DEFAULTS, **(_TINY_MOTION if tiny else {}), **overrides}


def check(vae: dict, motion: dict) -> None:
    """ValueError when a VAE config and a motion config cannot make one pipeline."""
    if motion["motion_dim"] != motion_dim(vae):
        raise ValueError(f"the motion model takes {motion['motion_dim']}-number motion latents, the VAE makes "
                         f"{motion_dim(vae)}")


def tiny() -> dict[str, dict]:
    """Tiny configs of both stages ({"vae": ..., "motion": ...}): seconds on a CPU."""
    return {"vae": vae_config(tiny=True), "motion": motion_config(tiny=True)}


def paper() -> dict[str, dict]:
    return {"vae": vae_config(), "motion": motion_config()}

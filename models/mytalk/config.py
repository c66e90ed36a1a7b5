"""MyTalk model configurations: the paper-size defaults and tiny ones for tests and smoke runs.

Each dict is the keyword arguments of the model's constructor (what `save_pretrained` stores in
config.json), so a config override is just `{**MOTION_DEFAULTS, **overrides}`.
"""

from __future__ import annotations

# Stage 1: audio (+ identity landmarks) -> lip/jaw landmark motion. A Conformer-S sized encoder.
MOTION_DEFAULTS: dict = {
    "n_mels": 80,  # log-mel bins (AudioFeatures defaults: 25 ms window, 10 ms hop, 16 kHz)
    "mel_window": 17,  # mel frames per video frame (AudioFeatures context 8 -> 2*8+1)
    "num_ref_frames": 8,  # reference frames whose landmarks carry the identity
    "d_model": 256,
    "num_layers": 6,
    "num_heads": 4,
    "ff_mult": 4,
    "conv_kernel": 15,  # depthwise temporal convolution, frames
    "dropout": 0.1,
    "mel_mean": -6.0,  # fixed standardisation of natural-log mel power
    "mel_std": 4.0,
    "offset_scale": 0.05,  # output units: offsets are predicted as multiples of 5% of the crop side
}

# Stage 2: landmark sketch + masked frame + reference lip crops -> lip region RGB + alpha.
RENDER_DEFAULTS: dict = {
    "image_size": 256,  # renderer resolution of the lower-face box
    "num_refs": 3,  # reference lip crops from other frames of the same video
    "base_channels": 64,
    "channel_mults": (1, 2, 4, 8),
    "blocks_per_level": 2,
    "box_scale": 0.5,  # side of the lower-face box, fraction of the aligned crop side
    "mask_dilation": 0.04,  # lip/jaw mask dilation, fraction of the box side
    "feather": 0.06,  # alpha may blend this far (fraction of the box side) outside the mask
}

_TINY_MOTION = {"num_ref_frames": 4, "d_model": 32, "num_layers": 2, "num_heads": 2, "ff_mult": 2,
                "conv_kernel": 5, "dropout": 0.0}
_TINY_RENDER = {"image_size": 32, "base_channels": 8, "channel_mults": (1, 2), "blocks_per_level": 1}


def motion_config(tiny: bool = False, **overrides) -> dict:
    return {**MOTION_DEFAULTS, **(_TINY_MOTION if tiny else {}), **overrides}


def render_config(tiny: bool = False, **overrides) -> dict:
    return {**RENDER_DEFAULTS, **(_TINY_RENDER if tiny else {}), **overrides}


def tiny() -> dict[str, dict]:
    """Tiny configs of both stages ({"motion": ..., "renderer": ...}): seconds on a CPU."""
    return {"motion": motion_config(tiny=True), "renderer": render_config(tiny=True)}


def paper() -> dict[str, dict]:
    return {"motion": motion_config(), "renderer": render_config()}

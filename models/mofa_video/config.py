"""MOFA-Video configurations: the paper (released checkpoint) sizes and a tiny one for tests and CPU.

One config is a plain dict, stored as the pipeline folder's `pipeline.json` next to the parts:

- `size`: the square resolution of the crops taken and made (the official Keypoint demo: 512).
- `num_frames`: the window the video model makes at once, the reference frame included (the official
  svdxt_pipeline_ctrlnet_loop: 14, SVD-xt's training length).
- `unet`: `UNetSpatioTemporalConditionModel` kwargs (stable-video-diffusion-img2vid-xt-1-1's unet/config.json:
  8 input channels = noisy latents + the reference's latents, 1024-wide image embedding context, the three
  added time ids fps / motion bucket / noise augmentation).
- `controlnet`: the MOFA adapter (models/mofa_video/controlnet.py `FlowControlNet`): the encoder half of the
  UNet (`unet`'s layout) plus the official conditioning widths: `conditioning_embedding_out_channels` (the
  reference image embedding, (16, 32, 96, 256)), `ldmk_embedding_out_channels` (the keypoint image
  embedding, (16, 32, 64, 128)), `occlusion` (the official ForegroundMatting per scale: `block_expansion`,
  `max_features`, `num_blocks`), `landmarks` (the keypoint variant's ldmk embedding; False is the trajectory
  controlnet) and `flow_zeroconv` (the trajectory controlnet's zero convs after each flow-encoder level).
- `cmp`: the sparse-to-dense motion network (models/mofa_video/flow.py `SparseToDense`, CMP's layout):
  `size` (the official runs CMP at 384), `img_enc_dim` / `sparse_enc_dim` (256 / 16), `image_channels` (our
  small image encoder; the official is a ResNet-50), `nbins` / `fmax` (99 / 50: the flow is classified into
  bins per axis and read back as the expectation).
- `keypoints`: the 478-point mesh subset whose motion becomes the sparse hints (`ibug68`: the 68 iBUG
  points, the official keypoint demo's 68 landmarks) and the radius of the dots the landmark images draw.
- `image_encoder`: {"type": "conv", "width": W} our small image encoder (no CLIP weights here), or
  {"type": "clip"} for SVD's CLIPVisionModelWithProjection in `image_encoder/` (a converted folder).
- `latent`: {"type": "vae"} (SVD's AutoencoderKLTemporalDecoder in `vae/`) or {"type": "pixel", "factor": F}.
- `scheduler`: SVD's EulerDiscreteScheduler (EDM sigmas, v-prediction, Karras spacing); `sampling`: steps
  (the official 25), the guidance ramp over the frames (SVD: 1.0 -> 3.0), fps / motion_bucket_id /
  noise_aug_strength (the official 6 / 127 / 0.02) and `conditioning_scale`.
"""

from __future__ import annotations

import copy

from ..follow_your_emoji.config import latent_factor

SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "interpolation_type": "linear",
             "num_train_timesteps": 1000, "prediction_type": "v_prediction", "sigma_max": 700.0, "sigma_min": 0.002,
             "steps_offset": 1, "timestep_spacing": "leading", "timestep_type": "continuous",
             "use_karras_sigmas": True}

_SVD_UNET = {
    "in_channels": 8, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                         "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                       "CrossAttnUpBlockSpatioTemporal"],
    "block_out_channels": [320, 640, 1280, 1280], "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768, "layers_per_block": 2, "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1, "num_attention_heads": [5, 10, 10, 20], "num_frames": 25,
}

_TINY_UNET = {
    "in_channels": 6, "out_channels": 3,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                         "DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
    "block_out_channels": [32, 32, 32], "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 24, "layers_per_block": 1, "cross_attention_dim": 32,
    "transformer_layers_per_block": 1, "num_attention_heads": [2, 2, 2], "num_frames": 4,
}

_PAPER: dict = {
    "size": 512,
    "num_frames": 14,
    "unet": _SVD_UNET,
    "controlnet": {"conditioning_embedding_out_channels": [16, 32, 96, 256],
                   "ldmk_embedding_out_channels": [16, 32, 64, 128], "landmarks": True, "flow_zeroconv": False,
                   "occlusion": {"block_expansion": 64, "max_features": 512, "num_blocks": 3}},
    "cmp": {"size": 384, "img_enc_dim": 256, "sparse_enc_dim": 16, "image_channels": [64, 128, 256], "nbins": 99,
            "fmax": 50.0, "decoder_width": 128},
    "keypoints": {"subset": "ibug68", "radius": 4},
    "image_encoder": {"type": "clip"},
    "latent": {"type": "vae"},
    "scheduler": SCHEDULER,
    "sampling": {"steps": 25, "min_guidance_scale": 1.0, "max_guidance_scale": 3.0, "fps": 6, "motion_bucket_id": 127,
                 "noise_aug_strength": 0.02, "conditioning_scale": 1.0},
}

_TINY: dict = {
    "size": 64,
    "num_frames": 4,
    "unet": _TINY_UNET,
    "controlnet": {"conditioning_embedding_out_channels": [8, 16, 16], "ldmk_embedding_out_channels": [8, 8, 16],
                   "landmarks": True, "flow_zeroconv": False,
                   "occlusion": {"block_expansion": 8, "max_features": 16, "num_blocks": 2}},
    "cmp": {"size": 64, "img_enc_dim": 16, "sparse_enc_dim": 8, "image_channels": [8, 16, 16], "nbins": 15,
            "fmax": 16.0, "decoder_width": 16},
    "keypoints": {"subset": "ibug68", "radius": 1},
    "image_encoder": {"type": "conv", "width": 16},
    "latent": {"type": "pixel", "factor": 4},
    "scheduler": SCHEDULER,
    "sampling": {"steps": 4, "min_guidance_scale": 1.0, "max_guidance_scale": 1.0, "fps": 6, "motion_bucket_id": 127,
                 "noise_aug_strength": 0.02, "conditioning_scale": 1.0},
}

SUBSETS = ("ibug68", "all")


def _copy(base: dict, overrides: dict) -> dict:
    return {**copy.deepcopy(base), **overrides}


def paper(**overrides) -> dict:
    """The paper's sizes: SVD-xt's UNet, the official adapter, 512 px, 14-frame windows."""
    return _copy(_PAPER, overrides)


def tiny(**overrides) -> dict:
    """64 px, 4-frame windows, a 32-wide UNet on pixel latents: trains and samples on a CPU."""
    return _copy(_TINY, overrides)


def official(**overrides) -> dict:
    """The released ldmk_controlnet's config (the keypoint variant at the paper sizes, SVD's VAE and CLIP)."""
    return paper(**overrides)


def latent_channels(config: dict) -> int:
    return 4 if config["latent"]["type"] == "vae" else 3


def check(config: dict) -> dict:
    """`config`, or ValueError when its parts disagree: the conditioning embeddings must land on the latent
    grid, the UNet must take the noisy and the reference latents, and its last two widths must agree (the
    official injects the deepest warped features after the last two down blocks)."""
    unet, net, factor = config["unet"], config["controlnet"], latent_factor(config)
    widths = list(unet["block_out_channels"])
    for key in ("conditioning_embedding_out_channels", "ldmk_embedding_out_channels"):
        if 2 ** (len(net[key]) - 1) != factor:
            raise ValueError(f"controlnet.{key} downsamples {2 ** (len(net[key]) - 1)}x but the latents are "
                             f"{factor}x smaller than the image")
    if unet["in_channels"] != 2 * latent_channels(config) or unet["out_channels"] != latent_channels(config):
        raise ValueError(f"unet in/out channels must be {2 * latent_channels(config)}/{latent_channels(config)} "
                         "(noisy + reference latents in, latents out)")
    if len(widths) < 2 or widths[-1] != widths[-2]:
        raise ValueError("unet.block_out_channels must end with two equal widths (as SVD's 1280, 1280)")
    if unet["projection_class_embeddings_input_dim"] != 3 * unet["addition_time_embed_dim"]:
        raise ValueError("unet.projection_class_embeddings_input_dim must be 3 * addition_time_embed_dim "
                         "(fps, motion bucket, noise augmentation)")
    if config["size"] % (factor * 2 ** (len(widths) - 1)):
        raise ValueError(f"size {config['size']} must be a multiple of {factor * 2 ** (len(widths) - 1)}")
    if int(config["num_frames"]) < 2:
        raise ValueError("num_frames must be >= 2 (the reference frame and one more)")
    if config["keypoints"]["subset"] not in SUBSETS:
        raise ValueError(f"keypoints.subset must be one of {SUBSETS}")
    if config["image_encoder"]["type"] not in ("conv", "clip"):
        raise ValueError("image_encoder.type must be conv or clip")
    return config


__all__ = ["SCHEDULER", "SUBSETS", "check", "latent_channels", "latent_factor", "official", "paper", "tiny"]

"""GAIA stage 1: the autoencoder that splits a talking face into appearance and motion.

- appearance encoder: frame j (RGB) -> a spatial appearance latent (8x down at paper size);
- motion encoder: the landmark image of frame i (`landmarks.landmark_image`) -> a small Gaussian motion
  latent (32x down, 4 channels: 256 numbers at paper size), KL-regularised toward N(0, I);
- decoder: the appearance latent with the motion latent upsampled onto its grid -> frame i.

Training pairs i != j of one clip, so the appearance latent cannot tell frame i's motion and the
decoder must read it from the motion latent, while the motion latent is too small (and drawn from
landmarks) to carry the appearance. The encoders and decoder are Stable Diffusion's autoencoder blocks
(`diffusers.models.autoencoders.vae.Encoder/Decoder`), as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, DiagonalGaussianDistribution, Encoder
from diffusers.models.modeling_utils import ModelMixin

INITIAL_MOTION_LOGVAR = -6.0


def _encoder(channels: tuple[int, ...], out_channels: int, layers: int, groups: int, double_z: bool) -> Encoder:
    return Encoder(in_channels=3, out_channels=out_channels, down_block_types=("DownEncoderBlock2D",) * len(channels),
                   block_out_channels=tuple(channels), layers_per_block=layers, norm_num_groups=groups,
                   double_z=double_z)


class GaiaVAE(ModelMixin, ConfigMixin):
    """appearance image (B,3,S,S) + landmark image (B,3,S,S), both in [-1, 1] -> image (B,3,S,S)."""

    @register_to_config
    def __init__(self, image_size: int = 256, appearance_channels: tuple[int, ...] = (64, 128, 256, 256),
                 appearance_latent_channels: int = 16, motion_channels: tuple[int, ...] = (32, 64, 128, 128, 256, 256),
                 motion_latent_channels: int = 4, decoder_channels: tuple[int, ...] = (64, 128, 256, 256),
                 layers_per_block: int = 2, norm_num_groups: int = 32):
        super().__init__()
        if len(decoder_channels) != len(appearance_channels):
            raise ValueError("decoder_channels must have as many levels as appearance_channels")
        for name, levels in (("appearance_channels", appearance_channels), ("motion_channels", motion_channels)):
            if image_size % 2 ** (len(levels) - 1):
                raise ValueError(f"image_size {image_size} is not divisible by the {name} downsampling")
        self.appearance_encoder = _encoder(appearance_channels, appearance_latent_channels, layers_per_block,
                                           norm_num_groups, double_z=False)
        self.motion_encoder = _encoder(motion_channels, motion_latent_channels, layers_per_block, norm_num_groups,
                                       double_z=True)
        # The motion posterior starts narrow: at the default N(0, 1)-wide start its samples are noise the
        # decoder learns to ignore (posterior collapse) before the motion encoder has learnt anything.
        with torch.no_grad():
            self.motion_encoder.conv_out.bias[motion_latent_channels:] = INITIAL_MOTION_LOGVAR
        self.decoder = Decoder(in_channels=appearance_latent_channels + motion_latent_channels, out_channels=3,
                               up_block_types=("UpDecoderBlock2D",) * len(decoder_channels),
                               block_out_channels=tuple(decoder_channels), layers_per_block=layers_per_block,
                               norm_num_groups=norm_num_groups)

    @property
    def motion_shape(self) -> tuple[int, int, int]:
        """(channels, h, w) of one frame's motion latent."""
        side = self.config.image_size // 2 ** (len(self.config.motion_channels) - 1)
        return self.config.motion_latent_channels, side, side

    @property
    def motion_dim(self) -> int:
        c, h, w = self.motion_shape
        return c * h * w

    def encode_appearance(self, images: torch.Tensor) -> torch.Tensor:
        return self.appearance_encoder(images)

    def encode_motion(self, landmark_images: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self.motion_encoder(landmark_images))

    def decode(self, appearance: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """appearance latents (B,Ca,h,w) + motion latents (B,Cm,hm,wm) or flat (B, motion_dim) -> images."""
        if motion.dim() == 2:
            motion = motion.reshape(len(motion), *self.motion_shape)
        motion = F.interpolate(motion, size=appearance.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder(torch.cat([appearance, motion.to(appearance.dtype)], dim=1))

    def forward(self, appearance_images: torch.Tensor, landmark_images: torch.Tensor,
                sample_posterior: bool = True) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """(reconstruction, motion posterior)."""
        posterior = self.encode_motion(landmark_images)
        motion = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(self.encode_appearance(appearance_images), motion), posterior


__all__ = ["GaiaVAE"]

"""The Face-Adapter network: its trained parts wired together (what training optimises and the pipeline runs).

Parts (one save_pretrained subfolder each; `part_names(config)` lists a config's):

    unet/               UNet2DConditionModel: SD1.5's denoiser (frozen in the paper), cross-attending to
                        the identity tokens in place of text
    controlnet/         ControlNetModel: the Attribute Controller's spatial branch, reading the spatial
                        condition and cross-attending to the attribute tokens (the official controlnet/)
    id2token/           ID2Token: face-ID embedding -> identity tokens (the official net_id2token)
    image2token/        Image2Token: attribute-encoder tokens -> attribute tokens (the official net_image2token)
    area_predictor/     AdaptingAreaPredictor: the reenactment's adapting area (the official net_seg_res18)
    face_id/            FaceIdEncoder (identity.backbone "conv"; "arcface" loads a frozen TorchScript model)
    attribute_encoder/  megactor's BackgroundEncoder (attribute.encoder "conv"; "clip" is the folder's
                        image_encoder/, outside the net)

Classifier-free guidance as the official (an empty prompt's embedding as the negative of both branches):
with no text encoder here, the unconditional context is zero tokens (`null_tokens`), trained by dropping
both contexts with the training option uncond_ratio.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from ..megactor.encoders import BackgroundEncoder
from .area import AdaptingAreaPredictor
from .config import check, width
from .face_id import FaceIdEncoder, load_arcface
from .tokens import ID2Token, Image2Token

PART_CLASSES: dict[str, type] = {"unet": UNet2DConditionModel, "controlnet": ControlNetModel, "id2token": ID2Token,
                                 "image2token": Image2Token, "area_predictor": AdaptingAreaPredictor,
                                 "face_id": FaceIdEncoder, "attribute_encoder": BackgroundEncoder}


def part_names(config: dict) -> tuple[str, ...]:
    names = ("unet", "controlnet", "id2token", "image2token", "area_predictor")
    if config["identity"]["backbone"] == "conv":
        names += ("face_id",)
    if config["attribute"]["encoder"] == "conv":
        names += ("attribute_encoder",)
    return names


def _tokens_kwargs(section: dict, config: dict) -> dict:
    return {"text_hidden_size": width(config), "max_length": int(section["tokens"]),
            "num_layers": int(section["num_layers"]), "dim_feedforward": int(section["dim_feedforward"])}


def build_parts(config: dict, only: tuple[str, ...] | None = None,
                unet: UNet2DConditionModel | None = None) -> dict[str, nn.Module]:
    """Fresh parts of `config` (`unet`: the one to start from, e.g. SD1.5's; the ControlNet copies its encoder,
    the ControlNet way)."""
    check(config)
    identity, attribute = config["identity"], config["attribute"]
    base = unet if unet is not None else UNet2DConditionModel(**config["unet"])
    builders: dict[str, Callable[[], nn.Module]] = {
        "unet": lambda: base,
        "controlnet": lambda: ControlNetModel.from_unet(base, conditioning_embedding_out_channels=tuple(
            config["controlnet"]["conditioning_embedding_out_channels"])),
        "id2token": lambda: ID2Token(id_dim=int(identity["id_dim"]), **_tokens_kwargs(identity, config)),
        "image2token": lambda: Image2Token(visual_hidden_size=int(attribute["hidden"]),
                                           **_tokens_kwargs(attribute, config)),
        "area_predictor": lambda: AdaptingAreaPredictor(channels=tuple(config["area"]["channels"])),
        "face_id": lambda: FaceIdEncoder(int(identity["id_dim"]), tuple(identity["channels"]),
                                         int(identity["input_size"])),
        "attribute_encoder": lambda: BackgroundEncoder(int(attribute["conv_tokens"]), int(attribute["hidden"]),
                                                       tuple(attribute["channels"])),
    }
    return {name: builders[name]() for name in (only or part_names(config))}


class FaceAdapterNet(nn.Module):
    """The parts, wired (see the module docstring). `face_id` is the trained FaceIdEncoder or a frozen ArcFace;
    `attribute_encoder` None when the attribute tokens come from CLIP (`attribute_tokens(hidden=...)`)."""

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel, id2token: ID2Token,
                 image2token: Image2Token, area_predictor: AdaptingAreaPredictor, face_id: nn.Module,
                 attribute_encoder: BackgroundEncoder | None = None):
        super().__init__()
        self.unet, self.controlnet, self.id2token, self.image2token = unet, controlnet, id2token, image2token
        self.area_predictor, self.face_id, self.attribute_encoder = area_predictor, face_id, attribute_encoder

    @classmethod
    def from_parts(cls, parts: dict[str, nn.Module], config: dict) -> FaceAdapterNet:
        """The net of `parts`; an "arcface" config's face_id is loaded from identity.arcface_path."""
        parts = dict(parts)
        if config["identity"]["backbone"] == "arcface":
            parts["face_id"] = load_arcface(config["identity"]["arcface_path"], int(config["identity"]["input_size"]))
        return cls(**parts)

    @classmethod
    def fresh(cls, config: dict, unet: UNet2DConditionModel | None = None) -> FaceAdapterNet:
        return cls.from_parts(build_parts(config, unet=unet), config)

    def parts(self) -> dict[str, nn.Module]:
        names = ["unet", "controlnet", "id2token", "image2token", "area_predictor"]
        names += [n for n in ("face_id", "attribute_encoder") if isinstance(getattr(self, n), PART_CLASSES[n])]
        return {name: getattr(self, name) for name in names}

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def identity_tokens(self, source: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) source crops in [-1, 1] -> (B, N, D) identity tokens."""
        return self.id2token(self.face_id(source.to(self.dtype)).to(self.dtype))

    def attribute_tokens(self, image: torch.Tensor | None = None, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M, D) attribute tokens of (B, 3, H, W) images in [-1, 1] (the conv encoder), or of CLIP's
        (B, L, hidden) last_hidden_state."""
        if hidden is None:
            if self.attribute_encoder is None:
                raise ValueError("this Face-Adapter reads CLIP tokens for its attributes: pass hidden=")
            hidden = self.attribute_encoder(image.to(self.dtype))
        return self.image2token(hidden.to(self.dtype))

    def adapting_area(self, source: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) logits of the reenactment's adapting area (source, landmark images in [-1, 1])."""
        return self.area_predictor(source.to(self.dtype), landmarks.to(self.dtype))

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor,
                identity: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        """The model output for (B, C, h, w) noisy latents: the ControlNet reads the (B, 3, H, W) spatial
        condition and cross-attends to the attribute tokens, its residuals join the UNet, which
        cross-attends to the identity tokens."""
        dtype = self.dtype
        down, mid = self.controlnet(noisy.to(dtype), timesteps, encoder_hidden_states=attributes.to(dtype),
                                    controlnet_cond=condition.to(dtype), return_dict=False)
        return self.unet(noisy.to(dtype), timesteps, encoder_hidden_states=identity.to(dtype),
                         down_block_additional_residuals=down, mid_block_additional_residual=mid).sample


def null_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """The unconditional context standing in for the official empty-prompt embedding."""
    return torch.zeros_like(tokens)


__all__ = ["PART_CLASSES", "FaceAdapterNet", "build_parts", "null_tokens", "part_names"]

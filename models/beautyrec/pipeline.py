"""BeautyREC inference: aligned face crops + parsing labels and one reference crop + its labels -> the crops
wearing the reference's makeup.

Pipeline folder (what `facefab train beautyrec` exports, `facefab convert beautyrec` writes and
`BeautyRECPipeline.save_pretrained` writes):

    model_index.json                       {"_class_name": "BeautyRECPipeline"}
    config.json                            BeautyRECNet's config (the net's save_pretrained at the folder
    diffusion_pytorch_model.safetensors    root, so `BeautyRECNet.from_pretrained(folder)` loads it too)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..shared.latents import to_uint8, to_unit
from ..shared.pipeline_folder import check_index, write_index
from ..weights import load_model, resolve_checkpoint
from .model import BeautyRECNet


def save_pipeline(net: BeautyRECNet, folder: str) -> None:
    """`net` (safetensors) and model_index.json into the local `folder`."""
    net = getattr(net, "module", net)  # DDP / DeepSpeed wrappers
    net.save_pretrained(folder, safe_serialization=True)
    write_index(folder, BeautyRECPipeline.__name__, {})


def _resized_images(frames: np.ndarray, size: int, device, dtype) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size) in [-1, 1] (area when shrinking, bilinear when growing)."""
    x = to_unit(frames, device=device, dtype=torch.float32)
    if x.shape[-1] != size or x.shape[-2] != size:
        shrinking = x.shape[-1] > size
        x = F.interpolate(x, size=(size, size), mode="area" if shrinking else "bilinear",
                          **({} if shrinking else {"align_corners": False}))
    return x.to(dtype)


def _resized_labels(labels: np.ndarray, size: int, device) -> torch.Tensor:
    """(N, H, W) integer labels -> (N, size, size) long, nearest neighbour."""
    x = torch.as_tensor(np.ascontiguousarray(labels), device=device).long()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    return x


class BeautyRECPipeline:
    """A BeautyRECNet over numpy crops (see the module docstring)."""

    def __init__(self, net: BeautyRECNet):
        self.net = net.eval()

    @property
    def size(self) -> int:
        return int(self.net.config.image_size)

    @classmethod
    def from_pretrained(cls, folder_or_uri: str, device: Any = "cpu", dtype: Any = "fp32",
                        storage_options: dict | None = None) -> BeautyRECPipeline:
        """A local folder or a remote one (s3://...) as written by save_pretrained (device / dtype names as
        facefab.models.weights.pick_device / pick_dtype take them)."""
        local = resolve_checkpoint(folder_or_uri, storage_options)
        check_index(local, cls.__name__, folder_or_uri)
        return cls(load_model(BeautyRECNet, local, device=device, dtype=dtype))

    def save_pretrained(self, folder: str) -> None:
        save_pipeline(self.net, folder)

    @torch.inference_mode()
    def __call__(self, source_crops: np.ndarray, reference_crop: np.ndarray, source_labels: np.ndarray,
                 reference_labels: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB: `source_crops` (N, S, S, 3) uint8 RGB made up like `reference_crop`
        (R, R, 3) uint8 RGB; labels (N, S, S) / (R, R) uint8 ids of facefab.face.parsing.LABEL_NAMES.
        Inputs are resized to the model's size and the outputs back to S."""
        source_crops, reference_crop = np.asarray(source_crops), np.asarray(reference_crop)
        source_labels, reference_labels = np.asarray(source_labels), np.asarray(reference_labels)
        if source_crops.ndim != 4 or source_crops.shape[-1] != 3 or source_crops.shape[1] != source_crops.shape[2]:
            raise ValueError(f"source_crops must be (N, S, S, 3) uint8, got {source_crops.shape}")
        if source_labels.shape != source_crops.shape[:3]:
            raise ValueError(f"source_labels must be {source_crops.shape[:3]}, got {source_labels.shape}")
        if reference_crop.ndim != 3 or reference_crop.shape[-1] != 3 or reference_labels.shape != reference_crop.shape[:2]:
            raise ValueError(f"reference_crop (R, R, 3) and reference_labels (R, R) expected, got "
                             f"{reference_crop.shape} and {reference_labels.shape}")
        n, side = len(source_crops), source_crops.shape[1]
        if n == 0:
            return source_crops.astype(np.uint8)
        size, net = self.size, self.net
        device, dtype = net.device, net.dtype
        reference = _resized_images(reference_crop[None], size, device, dtype)
        reference_ids = _resized_labels(reference_labels[None], size, device)
        out = []
        for start in range(0, n, max(1, int(batch_size))):
            crops = _resized_images(source_crops[start:start + batch_size], size, device, dtype)
            labels = _resized_labels(source_labels[start:start + batch_size], size, device)
            b = len(crops)
            made_up = net(crops, reference.expand(b, -1, -1, -1), labels, reference_ids.expand(b, -1, -1)).float()
            if size != side:
                made_up = F.interpolate(made_up, size=(side, side), mode="bilinear", align_corners=False)
            out.append(to_uint8(made_up))
        return np.concatenate(out)


__all__ = ["BeautyRECPipeline", "save_pipeline"]

"""face-vid2vid inference: one reference crop + a driving video -> the reference reenacted
(facefab.models.shared.driven's interface).

Pipeline folder (what `facefab train facevid2vid` exports and `FaceVid2VidPipeline.save_pretrained` writes):

    model_index.json                       {"_class_name": "FaceVid2VidPipeline"}
    config.json                            FaceVid2VidModel's config (save_pretrained at the folder root,
    diffusion_pytorch_model.safetensors    so `FaceVid2VidModel.from_pretrained(folder)` loads it too)

A bare model folder (config.json + safetensors, the training export before model_index.json was
written) loads as well.

Generation: the reference is encoded once (appearance volume, canonical keypoints, pose); each
driving frame's head pose and expression are estimated, in batches of `batch_size` frames. Relative
mode (the paper's and the public reimplementations' default for cross-identity reenactment): the
driving motion relative to the first driving frame is applied on top of the reference's own pose and
expression (model.relative_motion), so the first output frame has the reference's own pose and expression;
absolute mode: the driving frame's own pose and expression on the reference's canonical keypoints.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..shared.pipeline_folder import check_index, write_index
from ..weights import load_model, resolve_checkpoint
from .model import FaceVid2VidModel, head_motion, relative_motion


def save_pipeline(model: FaceVid2VidModel, folder: str) -> None:
    """`model` (safetensors) and model_index.json into the local `folder`."""
    model = getattr(model, "module", model)  # DDP / DeepSpeed wrappers
    model.save_pretrained(folder, safe_serialization=True)
    write_index(folder, FaceVid2VidPipeline.__name__, {})


def _to_images(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).to(dtype) / 255.0


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class FaceVid2VidPipeline:
    """A trained FaceVid2VidModel as a DrivenPipeline (see the module docstring)."""

    def __init__(self, model: FaceVid2VidModel, batch_size: int = 16):
        self.model, self.batch_size = model.eval(), batch_size

    @property
    def size(self) -> int:
        return int(self.model.config.image_size)

    @classmethod
    def from_pretrained(cls, folder: str, device: str = "auto", dtype: str = "auto") -> FaceVid2VidPipeline:
        local = resolve_checkpoint(folder)
        check_index(local, cls.__name__, folder)
        return cls(load_model(FaceVid2VidModel, local, device=device, dtype=dtype))

    def save_pretrained(self, folder: str) -> None:
        save_pipeline(self.model, folder)

    def __call__(self, reference: np.ndarray, points: np.ndarray | None, driving: np.ndarray,
                 driving_points: np.ndarray | None = None, *, relative: bool = True, steps: int | None = None,
                 guidance_scale: float | None = None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8 frames: `reference` (S, S, 3) uint8 with the motion of `driving` (N, S, S, 3).

        The model finds its own keypoints, so `points` and `driving_points` are not used; it is not a
        diffusion model and deterministic, so `steps`, `guidance_scale` and `seed` are ignored. Inputs of
        another size are resized to `size`; the output is always `size`. `progress(done, N)` after each batch.
        """
        reference, driving = np.asarray(reference), np.asarray(driving)
        if reference.ndim != 3 or reference.shape[-1] != 3:
            raise ValueError(f"reference must be (S, S, 3) uint8, got {reference.shape}")
        if driving.ndim != 4 or driving.shape[-1] != 3 or len(driving) == 0:
            raise ValueError(f"driving must be (N, S, S, 3) uint8 with N >= 1, got {driving.shape}")
        model, n = self.model, len(driving)
        device, dtype = model.device, model.dtype
        frames = []
        with torch.inference_mode():
            state = model.encode_source(_to_images(reference[None], device, dtype))
            initial = model.estimate_pose(_to_images(driving[:1], device, dtype)) if relative else None
            for start in range(0, n, self.batch_size):
                batch = driving[start:start + self.batch_size]
                pose = model.estimate_pose(_to_images(batch, device, dtype))
                motion = relative_motion(state["pose"], pose, initial) if relative else head_motion(pose)
                frames.append(_to_uint8(model.render(state, motion)["prediction"]))
                if progress is not None:
                    progress(start + len(batch), n)
        return np.concatenate(frames)


__all__ = ["FaceVid2VidPipeline", "save_pipeline"]

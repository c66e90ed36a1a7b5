"""Face-Adapter inference (Han et al., ECCV 2024; FaceAdapter/Face-Adapter infer.py): face swap and
reenactment of aligned face crops with a ControlNet-adapted SD UNet.

Pipeline folder (what `facefab train face-adapter` exports):

    model_index.json    {"_class_name": "FaceAdapterPipeline", "<part>": ["<library>", "<class>"], ...}
    pipeline.json       the config (models/face_adapter/config.py)
    <part>/             the parts of models/face_adapter/net.py
    image_encoder/      CLIPVisionModelWithProjection (attribute.encoder "clip")
    vae/                AutoencoderKL, when latent.type is "vae" (the tiny config uses pixel latents)

A call, per target frame (the official infer.py): the target's landmarks drawn as the 70-point image; the
adapting area (swap: the target's face hull, dilated; reenact: the Adapting Area Predictor on the source and
that image, joined with both faces' hulls when the source's mesh is given); the spatial condition (landmarks
inside the area, the base image outside: the target frame for a swap, the source for a reenactment); the
identity tokens of the source; the attribute tokens of the base image. DDIM with classifier-free guidance
(zero tokens as the negative of both branches), every frame from the same noise (frames of a video agree).
The result is pasted on the base image at its own resolution through the soft blend mask: beyond the area
plus the feather the output is the base image, pixel for pixel.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from facefab.media import resize_frames

from ..follow_your_emoji.landmarks import retarget
from ..follow_your_emoji.pipeline import clip_pixels
from ..shared import pipeline_folder as folder_io
from ..shared.latents import PixelCodec, VaeCodec, codec_from_folder, to_unit
from ..shared.net_pipeline import NetPipeline
from ..shared.sampling import Progress, guided, initial_noise, make_scheduler, sample_inpainted
from ..weights import resolve_checkpoint
from .conditions import adapting_area, blend_mask, face_hull, landmark_image, spatial_condition
from .config import MODES, check, latent_factor
from .net import PART_CLASSES, FaceAdapterNet, null_tokens, part_names

CLASS_NAME = "FaceAdapterPipeline"


def save_parts(parts: dict[str, torch.nn.Module], folder: str, config: dict) -> None:
    folder_io.save_parts(parts, folder, check(config), CLASS_NAME)


def read_config(folder: str) -> dict:
    return folder_io.read_config(folder, check, "Face-Adapter")


def load_parts(folder: str, config: dict, device: Any = "cpu", dtype: Any = "fp32") -> dict[str, torch.nn.Module]:
    classes = {name: PART_CLASSES[name] for name in part_names(config)}
    return folder_io.load_parts(folder, classes, "Face-Adapter", "face-adapter", device, dtype)


def _unit_batch(images: np.ndarray, device, dtype) -> torch.Tensor:
    return to_unit(np.ascontiguousarray(images), device, dtype)


class FaceAdapterPipeline(NetPipeline):
    """Face swap / reenactment of aligned crops (see the module docstring)."""

    def __init__(self, net: FaceAdapterNet, codec: PixelCodec | VaeCodec, config: dict, image_encoder=None):
        self.net, self.codec, self.config = net.eval(), codec, check(config)
        self.image_encoder = image_encoder

    @classmethod
    def from_pretrained(cls, folder: str, device: Any = "cpu", dtype: Any = "fp32") -> FaceAdapterPipeline:
        local = resolve_checkpoint(folder)
        config = read_config(local)
        device, dtype = cls.placement(device, dtype)
        net = FaceAdapterNet.from_parts(load_parts(local, config, device, dtype), config).to(device)
        encoder = None
        if config["attribute"]["encoder"] == "clip":
            encoder = cls.image_encoder_in(local, device, dtype)
            if encoder is None:
                from ..weights import CheckpointError

                raise CheckpointError(f"Face-Adapter {local}: attribute.encoder is clip but there is no image_encoder/")
        return cls(net, codec_from_folder(local, config["latent"], device, dtype), config, encoder)

    def save_pretrained(self, folder: str) -> None:
        save_parts(self.net.parts(), folder, self.config)
        self.save_side_models(folder)

    # -- the conditions -----------------------------------------------------------------------------

    def attribute_tokens(self, images: np.ndarray) -> torch.Tensor:
        """(B, M, D) attribute tokens of (B, S, S, 3) uint8 images (CLIP's last_hidden_state, or the conv encoder)."""
        if self.image_encoder is None:
            return self.net.attribute_tokens(_unit_batch(images, self.device, self.dtype))
        pixels = torch.from_numpy(np.stack([clip_pixels(x) for x in images])).to(self.device, self.image_encoder.dtype)
        return self.net.attribute_tokens(hidden=self.image_encoder(pixels).last_hidden_state)

    def areas(self, mode: str, source: torch.Tensor, landmark_images: torch.Tensor, target_points: np.ndarray,
              source_points: np.ndarray | None) -> np.ndarray:
        """(N, size, size) float32 adapting areas at model size (see the module docstring)."""
        size, dilate = self.size, float(self.config["area"]["dilate"])
        if mode == "swap":
            return np.stack([face_hull(p, size, dilate) for p in target_points])
        logits = self.net.adapting_area(source.expand(len(landmark_images), -1, -1, -1), landmark_images)
        predicted = (logits.float() > 0).squeeze(1).cpu().numpy().astype(np.float32)
        if source_points is None:
            return predicted
        hulls = np.stack([adapting_area(source_points, p, size=size, dilate=dilate) for p in target_points])
        return np.maximum(predicted, hulls)

    # -- generation ----------------------------------------------------------------------------------

    def _generate(self, condition: torch.Tensor, identity: torch.Tensor, attributes: torch.Tensor, steps: int,
                  scale: float, seed: int) -> np.ndarray:
        """(n, size, size, 3) uint8: DDIM from one noise shared by the n frames."""
        n, grid = len(condition), self.size // latent_factor(self.config)
        scheduler = make_scheduler(self.config["scheduler"])
        noise = initial_noise((1, self.codec.channels, 1, grid, grid), seed, self.device, torch.float32, scheduler)
        identity = identity.expand(n, -1, -1)

        def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x = latents[0].transpose(0, 1)  # (n, C, h, w)
            out = self.net(x, t, condition, identity, attributes).float()
            if scale > 1.0:
                out = guided(out, self.net(x, t, condition, null_tokens(identity), null_tokens(attributes)).float(),
                             scale)
            return out.transpose(0, 1)[None]

        latents = sample_inpainted(predict, scheduler, noise.expand(-1, -1, n, -1, -1).contiguous(), steps)
        return self.frames_of(latents)

    @torch.no_grad()
    def __call__(self, source_crop: np.ndarray, target_crops: np.ndarray, target_landmarks: np.ndarray,
                 mode: str = "swap", source_landmarks: np.ndarray | None = None, *, steps: int | None = None,
                 guidance_scale: float | None = None, seed: int = 0, progress: Progress = None,
                 batch_size: int = 8) -> np.ndarray:
        """(N, S, S, 3) uint8: the source's identity in each target crop (swap: the target's background, hair,
        pose and expression), or the source moved to each target's landmarks (reenact: the source's
        appearance and background). source_crop (S, S, 3) uint8 RGB; target_crops (N, S, S, 3) uint8;
        target_landmarks (N, 478, 2+) in target-crop pixels; source_landmarks (478, 2+) in source-crop pixels
        (reenact: the target meshes are placed on the source's face, and the area takes both hulls)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        source_crop, target_crops = np.asarray(source_crop), np.asarray(target_crops)
        target_landmarks = np.asarray(target_landmarks, np.float32)[..., :2]
        if source_crop.ndim != 3 or target_crops.ndim != 4 or len(target_crops) != len(target_landmarks):
            raise ValueError("source_crop (S, S, 3), target_crops (N, S, S, 3) and target_landmarks (N, 478, 2+) "
                             f"expected, got {source_crop.shape}, {target_crops.shape}, {target_landmarks.shape}")
        size, sampling, n = self.size, self.config["sampling"], len(target_crops)
        src_side, out_side = source_crop.shape[0], target_crops.shape[1]
        source_points = None if source_landmarks is None else \
            np.asarray(source_landmarks, np.float32)[:, :2] * (size / src_side)
        points = target_landmarks * (size / out_side)  # model-size pixels
        if mode == "reenact" and source_points is not None:
            points = retarget(source_points, points, relative=False)
        steps = int(steps or sampling["steps"])
        scale = float(sampling["guidance_scale"] if guidance_scale is None else guidance_scale)
        radius, feather = float(self.config["landmarks"]["radius"]), float(self.config["area"]["feather"])

        source_small = resize_frames(source_crop[None], (size, size))
        source = _unit_batch(source_small, self.device, self.dtype)
        identity = self.net.identity_tokens(source)
        base_side = src_side if mode == "reenact" else out_side
        out = np.empty((n, base_side, base_side, 3), np.uint8)
        for start in range(0, n, batch_size):
            chunk = slice(start, min(n, start + batch_size))
            lmk = _unit_batch(np.stack([landmark_image(p, size, radius) for p in points[chunk]]), self.device,
                              self.dtype)
            areas = self.areas(mode, source, lmk, points[chunk], source_points)
            base_small = source_small.repeat(len(lmk), axis=0) if mode == "reenact" else \
                resize_frames(target_crops[chunk], (size, size))
            base_unit = _unit_batch(base_small, self.device, self.dtype)
            area_t = torch.from_numpy(areas)[:, None].to(self.device, self.dtype)
            condition = spatial_condition(lmk, area_t, base_unit)
            generated = self._generate(condition, identity, self.attribute_tokens(base_small), steps, scale, seed)
            for i, k in enumerate(range(chunk.start, chunk.stop)):
                base = source_crop if mode == "reenact" else target_crops[k]
                out[k] = _paste(generated[i], base, areas[i], feather)
            if progress:
                progress(chunk.stop, n)
        return out

    def as_driven(self) -> DrivenFaceAdapter:
        """This pipeline's reenact mode behind `shared.driven.DrivenPipeline`'s call: what
        `facefab animate --driving --model face-adapter` and `facefab swap --mode reenact` run."""
        return DrivenFaceAdapter(self)


class DrivenFaceAdapter:
    """Face-Adapter's reenactment with the DrivenPipeline interface: the reference crop moved to each
    driving frame's mesh (relative: the reference's own mesh plus the driving motion since its first frame)."""

    def __init__(self, pipeline: FaceAdapterPipeline):
        self.pipeline = pipeline

    @property
    def size(self) -> int:
        return self.pipeline.size

    def save_pretrained(self, folder: str) -> None:
        self.pipeline.save_pretrained(folder)

    def __call__(self, reference: np.ndarray, points: np.ndarray, driving: np.ndarray, driving_points: np.ndarray,
                 *, relative: bool = True, steps: int | None = None, guidance_scale: float | None = None,
                 seed: int = 0, progress: Progress = None) -> np.ndarray:
        reference, driving_points = np.asarray(reference), np.asarray(driving_points, np.float32)
        scale = reference.shape[0] / np.asarray(driving).shape[1]  # the meshes in the reference crop's pixels
        targets = retarget(points, driving_points * scale) if relative else driving_points * scale
        # reenact paints over the reference, so the targets stand in the reference's place; the pipeline
        # places them on the reference's face (a similarity of the first)
        frames = np.broadcast_to(reference, (len(targets), *reference.shape))
        return self.pipeline(reference, frames, targets, mode="reenact", source_landmarks=points, steps=steps,
                             guidance_scale=guidance_scale, seed=seed, progress=progress)


def _paste(generated: np.ndarray, base: np.ndarray, area: np.ndarray, feather: float) -> np.ndarray:
    """`generated` (model size) over `base` (its own size) through the soft blend mask of `area`."""
    side = base.shape[0]
    big = resize_frames(generated[None], (side, side))[0].astype(np.float32)
    hard = cv2.resize(area, (side, side), interpolation=cv2.INTER_NEAREST)
    alpha = blend_mask(hard, feather)[..., None]
    return np.clip(big * alpha + base.astype(np.float32) * (1 - alpha), 0, 255).round().astype(np.uint8)


__all__ = ["CLASS_NAME", "FaceAdapterPipeline", "load_parts", "read_config", "save_parts"]

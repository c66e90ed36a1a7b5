"""MegActor as `facefab train megactor` (the TrainingSystem contract of facefab.training.systems): the official
two training stages (configs/train/train_stage1.yaml, train_stage2.yaml) as two stages of one system
(`--stage`):

- `spatial` (the default, the official stage 1: trainable_modules appearance_encoder and unet): the
  appearance encoder, the denoiser's spatial layers, the driving encoder (with its AdaLN fusion) and, in
  configs without CLIP, the background encoder learn to redraw a frame from the reference, its background
  and the frame's face region. The official stage 1 fine-tunes on 12-frame clips, motion modules included;
  here single frames (`num_frames` 1), the CPU-sized form; `--system-options '{"num_frames": 12}'` and the
  group "motion" added to "train" give the official one.
- `temporal` (the official stage 2: trainable_modules motion_module): clips of 16 frames (the inference
  window), the motion modules only, driving frames warped with probability `warp_rate` 0.25 (the official
  warp_rate). It continues the first with the option `init` (that pipeline folder):

    facefab train megactor --data ROOT --out CKPT --preset tiny
    facefab train megactor --stage temporal --data ROOT --out CKPT --preset tiny \
        --system-options '{"init": "CKPT/megactor"}'

Every stage exports the whole pipeline folder (facefab.models.megactor.pipeline), merged into
CKPT_ROOT/megactor/, which `MegActorPipeline.from_pretrained` loads after either stage.

Samples (one preprocess row -> `samples_per_clip`, drawn afresh every pass (fixed by option seed); S = config size, F =
num_frames): reference (S,S,3) uint8, a frame of the aligned crop at least `reference_margin` frames from
the target window; target (F,S,S,3) uint8 consecutive frames; driving (F,S,S,3) uint8, those frames through
the official face-region preprocessing (models/megactor/driving.py: the face box kept and greyed, or with
probability `contour_ratio` the contour-preserving patches placed on the reference's face, what
`relative=True` drives with); mask (S,S) uint8, the reference's background mask. The official drives with
face-swapped copies of the target frames (use_swap_rate; data_processing/3.style_transfer, 4.face_fusion)
so the driver's identity does not leak; facefab has no face swapper, the grey face region of the frames
themselves drives here.

Loss: MSE to the noise (epsilon prediction, train.py) with the official noise offset 0.1; with probability
`uncond_ratio` a batch is denoised without the reference tokens, the unconditional branch of the official
classifier-free guidance (the official does not train it; ours does, so guidance has a trained branch).
Configs with a CLIP image encoder need its folder (option `image_encoder`, frozen, copied into the export).
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import cv2
import numpy as np
import torch

from facefab.models.megactor.config import check, paper, tiny
from facefab.models.megactor.driving import background_mask, driving_frames
from facefab.models.megactor.pipeline import (
    IMAGE_ENCODER_FOLDER,
    VAE_FOLDER,
    MegActorNet,
    load_parts,
    read_config,
    save_parts,
)
from facefab.models.shared.sampling import make_scheduler

from .follow_your_emoji import load_aligned_clip
from .reference_diffusion import COMMON_OPTIONS, ReferenceDiffusionSystem, encode_frames, noised, pick_reference
from .systems import SYSTEMS, sample_rng

log = logging.getLogger(__name__)

DEFAULT_OPTIONS: dict[str, Any] = {
    **COMMON_OPTIONS,         # see training.reference_diffusion; "train" picks from GROUPS
    "noise_offset": 0.1,      # the official `0.1 * randn(b, c, 1, 1, 1)`
    "contour_ratio": 0.5,     # samples driven by the contour-preserving patches
    "warp_rate": 0.0,         # samples whose driving frames are shifted and scaled (the stage sets it)
    "image_encoder": "",      # a CLIPVisionModelWithProjection folder, for configs with image_encoder.type "clip"
}

STAGES: dict[str, dict[str, Any]] = {
    "spatial": {"num_frames": 1, "train": ["appearance_encoder", "spatial", "condition_input_layer",
                                           "background_encoder"]},
    "temporal": {"num_frames": 16, "train": ["motion"], "warp_rate": 0.25},
}

GROUPS = {
    "appearance_encoder": lambda part, rest, net: part == "appearance_encoder" and feeds_the_denoiser(rest, net),
    "spatial": lambda part, rest, _: part == "unet" and ".motion_modules." not in f".{rest}",
    "motion": lambda part, rest, _: part == "unet" and ".motion_modules." in f".{rest}",
    "condition_input_layer": lambda part, _, __: part == "condition_input_layer",
    "background_encoder": lambda part, _, __: part == "background_encoder",
}


def feeds_the_denoiser(rest: str, net: MegActorNet) -> bool:
    """Whether the appearance encoder's parameter `rest` shapes a token the denoiser reads: all but the last
    transformer block after its norm1 (the last token taken), its proj_out, conv_norm_out and conv_out, the
    parts the official AppearanceEncoderModel removes (up_blocks[3].attentions[2] ... = Identity)."""
    if rest.startswith(("conv_norm_out.", "conv_out.")):
        return False
    last = len(net.appearance_encoder.up_blocks) - 1
    attentions = getattr(net.appearance_encoder.up_blocks[last], "attentions", None)
    if not attentions:
        return True
    head = f"up_blocks.{last}.attentions.{len(attentions) - 1}."
    kept = ("norm.", "proj_in.", "transformer_blocks.0.norm1.")  # up to the last token taken
    return not rest.startswith(head) or rest[len(head):].startswith(kept)


@SYSTEMS.register("megactor")
class MegActorSystem(ReferenceDiffusionSystem):
    """TrainingSystem for MegActor (see the module docstring). Picklable: the codec and CLIP are built where used."""

    name = "megactor"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": paper(), "tiny": tiny()}
    stages = STAGES
    export_group = "megactor"
    default_stage = "spatial"
    default_options = DEFAULT_OPTIONS
    groups = GROUPS
    init_keys = ("unet", "motion_preset", "condition_input_layer", "image_encoder", "latent")

    def default_config(self) -> dict[str, Any]:
        return paper()

    def check_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return check(config)

    def configure(self, model_config: dict[str, Any] | None = None, stage: str = "",
                  options: dict[str, Any] | None = None) -> None:
        super().configure(model_config, stage, options)
        if self.config["image_encoder"]["type"] == "clip" and not self.options["image_encoder"]:
            raise ValueError("this config cross-attends to CLIP image tokens: give the CLIP vision folder as the "
                             "option --system-options '{\"image_encoder\": \"DIR\"}' (or use --preset tiny)")
        self._clip = None

    def fresh_model(self, config: dict[str, Any]) -> MegActorNet:
        return MegActorNet.fresh(config)

    def read_init(self, folder: str) -> tuple[dict[str, Any], dict[str, torch.nn.Module]]:
        config = read_config(folder)
        return config, load_parts(folder, config, "cpu", "fp32")

    def make_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        f = int(self.options["num_frames"])
        clip = load_aligned_clip(row, int(self.config["size"]), int(self.options["max_frames"]), f + 1,
                                 storage_options, self.name)
        if clip is None:
            return []
        return self._draw(clip, sample_rng(row, self.options["seed"]), int(self.options["samples_per_clip"]))

    def loss(self, model: MegActorNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        codec = self.codec_on(device)
        scheduler = make_scheduler(self.config["scheduler"])
        latents = encode_frames(codec, batch["target"], device)
        reference_latents = encode_frames(codec, batch["reference"][:, None], device)[:, :, 0]
        reference = batch["reference"].to(device).float().permute(0, 3, 1, 2) / 255.0
        mask = batch["mask"].to(device).float()[:, None]
        driving = batch["driving"].to(device).float().permute(0, 4, 1, 2, 3) / 255.0  # (B, 3, F, S, S)
        noisy, timesteps, target = noised(scheduler, latents, float(self.options["noise_offset"]))
        use_reference = bool(torch.rand(()) >= float(self.options["uncond_ratio"]))
        context = self._clip_context(reference * mask, device)
        prediction = model(noisy, timesteps, reference_latents, reference, mask, driving, context, use_reference)
        mse = ((prediction.float() - target.float()) ** 2).mean()
        return mse, {"mse": float(mse.detach())}

    def export(self, model: MegActorNet, out_dir: str) -> None:
        """The whole pipeline folder: the parts, pipeline.json, model_index.json (+ vae/, image_encoder/)."""
        save_parts(model.parts(), out_dir, self.config)
        if self.config["latent"]["type"] == "vae":
            self.codec_on(torch.device("cpu")).vae.save_pretrained(os.path.join(out_dir, VAE_FOLDER),
                                                                   safe_serialization=True)
        if self.config["image_encoder"]["type"] == "clip":
            self.clip_on(torch.device("cpu")).save_pretrained(os.path.join(out_dir, IMAGE_ENCODER_FOLDER),
                                                               safe_serialization=True)

    # -- helpers ----------------------------------------------------------------------------------

    def _clip_context(self, background: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        """(B, L, D) CLIP tokens of the (B, 3, S, S) [0, 1] backgrounds, or None (the background encoder's)."""
        if self.config["image_encoder"]["type"] != "clip":
            return None
        clip = self.clip_on(device)
        with torch.no_grad():
            hidden = clip(self.clip_input(background)).last_hidden_state
            return clip.visual_projection(clip.vision_model.post_layernorm(hidden))

    def _draw(self, clip: dict[str, np.ndarray], rng: np.random.Generator, count: int) -> list[dict[str, np.ndarray]]:
        f, size = int(self.options["num_frames"]), int(self.config["size"])
        drive = self.config.get("driving", {})
        valid = clip["valid"]
        whole = np.convolve(valid.astype(int), np.ones(f, int), mode="valid") == f  # windows meshed throughout
        starts = np.flatnonzero(whole)
        if not len(starts):
            return []
        margin = min(int(self.options["reference_margin"]), len(valid) // 4)
        samples = []
        for start in rng.choice(starts, size=count):
            end = start + f
            ref = pick_reference(rng, valid, start, end, margin)
            frames, mesh = clip["crops"][start:end], clip["mesh"][start:end]
            if rng.random() < float(self.options["warp_rate"]):
                frames, mesh = _warp(frames, mesh, rng)
            grey = driving_frames(frames, mesh, clip["mesh"][ref],
                                  contour_preserve=bool(rng.random() < float(self.options["contour_ratio"])),
                                  top_margin=float(drive.get("top_margin", 0.4)),
                                  bottom_margin=float(drive.get("bottom_margin", 0.1)),
                                  patch_div=int(drive.get("patch_div", 8)))
            samples.append({"reference": np.ascontiguousarray(clip["crops"][ref]),
                            "target": np.ascontiguousarray(clip["crops"][start:end]), "driving": grey,
                            "mask": background_mask(clip["mesh"][ref], size).astype(np.uint8)})
        return samples


def _warp(frames: np.ndarray, mesh: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The clip's frames and meshes moved by one random similarity (scale 0.9-1.1, shift up to 5%, roll up to
    5 degrees): the driving face is not where the target's is."""
    size = frames.shape[1]
    affine = cv2.getRotationMatrix2D((size / 2, size / 2), float(rng.uniform(-5, 5)), float(rng.uniform(0.9, 1.1)))
    affine[:, 2] += rng.uniform(-0.05, 0.05, 2) * size
    warped = np.stack([cv2.warpAffine(np.ascontiguousarray(x), affine, (size, size)) for x in frames])
    return warped, (mesh @ affine[:, :2].T + affine[:, 2]).astype(np.float32)


__all__ = ["DEFAULT_OPTIONS", "GROUPS", "STAGES", "MegActorSystem"]

"""Face-Adapter as `facefab train face-adapter` (the TrainingSystem contract of facefab.training.systems).

Self-supervised as the paper: the source and the target are two frames of one clip (the same person, at
least `reference_margin` frames apart); the model redraws the target from the source's identity tokens, the
target's landmark image and a background, as swap or reenactment, one drawn per batch (`swap_ratio`):

- swap: the adapting area is the target's face hull (dilated); the background outside it is the target
  itself; the attribute tokens are the target's (the official swap inference);
- reenact: the adapting area is the union of both faces' hulls, the background outside it the source; the
  attribute tokens the source's (the official reenactment inference).

Loss: MSE to the scheduler's target (epsilon with SD1.5's; v with the tiny config's) with a noise offset,
plus `area_weight` x the binary cross-entropy of the Adapting Area Predictor (source + landmark image)
against the reenactment's area.
With probability `uncond_ratio` a batch reads zero identity and attribute tokens (the unconditional branch
of classifier-free guidance).

Trained parts: the ControlNet, ID2Token, Image2Token, the area predictor and the weight-free encoders
(FaceIdEncoder, the conv attribute encoder) where the config uses them; the UNet only with the config's
`train_unet` (the tiny preset: no SD weights, a fresh UNet). The paper config freezes SD1.5's UNet, read
from the option `unet` (an SD1.5 folder with unet/, or a UNet folder); `vae` (latent.type "vae") and
`image_encoder` (attribute.encoder "clip": a CLIP vision folder, frozen, copied into the export) as the
other systems. The export is the whole pipeline folder (FaceAdapterPipeline.from_pretrained):

    facefab train face-adapter --data ROOT --out CKPT --preset tiny
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from facefab.models.face_adapter.conditions import adapting_area, face_hull, landmark_image, spatial_condition
from facefab.models.face_adapter.config import check, paper, tiny
from facefab.models.face_adapter.net import FaceAdapterNet, null_tokens
from facefab.models.face_adapter.pipeline import load_parts, read_config, save_parts
from facefab.models.shared.latents import to_unit
from facefab.models.shared.net_pipeline import IMAGE_ENCODER_FOLDER, VAE_FOLDER
from facefab.models.shared.sampling import make_scheduler

from .follow_your_emoji import load_aligned_clip
from .reference_diffusion import COMMON_OPTIONS, ReferenceDiffusionSystem, noised, pick_reference
from .systems import SYSTEMS, sample_rng

DEFAULT_OPTIONS: dict[str, Any] = {
    **COMMON_OPTIONS,         # see training.reference_diffusion; "train" picks from GROUPS
    "swap_ratio": 0.5,        # batches drawn as swaps (else reenactments)
    "area_weight": 1.0,       # the area predictor's BCE in the loss
    "unet": "",               # SD1.5 folder (with unet/) or a UNet folder: the (frozen) denoiser to start from
    "image_encoder": "",      # a CLIP vision folder, for configs with attribute.encoder "clip"
}
ADAPTER = ["controlnet", "id2token", "image2token", "area_predictor", "face_id", "attribute_encoder"]
STAGES: dict[str, dict[str, Any]] = {"adapter": {"num_frames": 1, "train": ADAPTER}}
GROUPS = {name: (lambda part, _rest, _net, name=name: part == name) for name in ["unet", *ADAPTER]}


@SYSTEMS.register("face-adapter")
class FaceAdapterSystem(ReferenceDiffusionSystem):
    """TrainingSystem for Face-Adapter (see the module docstring). Picklable: the codec and CLIP are built where
    used."""

    name = "face-adapter"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": paper(), "tiny": tiny()}
    stages = STAGES
    export_group = "face-adapter"
    default_stage = "adapter"
    default_options = DEFAULT_OPTIONS
    groups = GROUPS
    init_keys = ("unet", "controlnet", "identity", "attribute", "area", "latent")

    def default_config(self) -> dict[str, Any]:
        return paper()

    def check_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return check(config)

    def configure(self, model_config: dict[str, Any] | None = None, stage: str = "",
                  options: dict[str, Any] | None = None) -> None:
        super().configure(model_config, stage, options)
        if not self.config["train_unet"] and not self.options["unet"] and not self.options["init"]:
            raise ValueError("this config freezes the UNet (train_unet false): give SD1.5's folder as the option "
                             "--system-options '{\"unet\": \"DIR\"}' (or use --preset tiny)")
        if self.config["attribute"]["encoder"] == "clip" and not self.options["image_encoder"]:
            raise ValueError("this config reads CLIP tokens for the attributes: give the CLIP vision folder as the "
                             "option --system-options '{\"image_encoder\": \"DIR\"}' (or use --preset tiny)")
        if self.config["train_unet"] and "unet" not in self.options["train"]:
            self.options["train"] = [*self.options["train"], "unet"]
        self._clip = None

    def fresh_model(self, config: dict[str, Any]) -> FaceAdapterNet:
        return FaceAdapterNet.fresh(config, unet=self._base_unet())

    def read_init(self, folder: str) -> tuple[dict[str, Any], dict[str, torch.nn.Module]]:
        config = read_config(folder)
        return config, load_parts(folder, config, "cpu", "fp32")

    # -- data ----------------------------------------------------------------------------------------

    def make_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        clip = load_aligned_clip(row, int(self.config["size"]), int(self.options["max_frames"]), 2, storage_options,
                                 self.name)
        if clip is None:
            return []
        return self.draw(clip, sample_rng(row, self.options["seed"]), int(self.options["samples_per_clip"]))

    def draw(self, clip: dict[str, np.ndarray], rng: np.random.Generator, count: int) -> list[dict[str, np.ndarray]]:
        """`count` (source, target) samples of one clip: the crops, the target's landmark image, the swap's
        area (the target's hull) and the reenactment's (both hulls)."""
        size, valid = int(self.config["size"]), clip["valid"]
        dilate, radius = float(self.config["area"]["dilate"]), float(self.config["landmarks"]["radius"])
        margin = min(int(self.options["reference_margin"]), len(valid) // 4)
        samples = []
        for target in rng.choice(np.flatnonzero(valid), size=count):
            source = pick_reference(rng, valid, int(target), int(target) + 1, margin)
            mesh, source_mesh = clip["mesh"][target], clip["mesh"][source]
            samples.append({"source": np.ascontiguousarray(clip["crops"][source]),
                            "target": np.ascontiguousarray(clip["crops"][target]),
                            "landmarks": landmark_image(mesh, size, radius),
                            "swap_area": face_hull(mesh, size, dilate).astype(np.uint8),
                            "reenact_area": adapting_area(source_mesh, mesh, size=size,
                                                          dilate=dilate).astype(np.uint8)})
        return samples

    # -- the loss ------------------------------------------------------------------------------------

    def terms(self, model: FaceAdapterNet, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"mse": the denoising loss, "area_bce": the area predictor's} of one batch (torch's RNG draws the
        mode, the noise and the timesteps)."""
        device = next(model.parameters()).device
        unit = {key: to_unit(batch[key], device) for key in ("source", "target", "landmarks")}
        swap = bool(torch.rand(()) < float(self.options["swap_ratio"]))
        area = batch["swap_area" if swap else "reenact_area"].to(device).float()[:, None]
        base = unit["target" if swap else "source"]
        condition = spatial_condition(unit["landmarks"], area, base)
        identity = model.identity_tokens(unit["source"])
        attributes = model.attribute_tokens(base, hidden=self._clip_hidden(base, device))
        if bool(torch.rand(()) < float(self.options["uncond_ratio"])):
            identity, attributes = null_tokens(identity), null_tokens(attributes)
        with torch.no_grad():
            latents = self.codec_on(device).encode(unit["target"])
        noisy, timesteps, target = noised(make_scheduler(self.config["scheduler"]), latents,
                                          float(self.options["noise_offset"]))
        prediction = model(noisy, timesteps, condition, identity, attributes)
        logits = model.adapting_area(unit["source"], unit["landmarks"]).float()
        reenact = batch["reenact_area"].to(device).float()[:, None]
        return {"mse": F.mse_loss(prediction.float(), target.float()),
                "area_bce": F.binary_cross_entropy_with_logits(logits, reenact)}

    def loss(self, model: FaceAdapterNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self.terms(model, batch)
        total = terms["mse"] + float(self.options["area_weight"]) * terms["area_bce"]
        return total, {name: float(value.detach()) for name, value in terms.items()}

    def export(self, model: FaceAdapterNet, out_dir: str) -> None:
        """The whole pipeline folder: the parts, pipeline.json, model_index.json (+ vae/, image_encoder/)."""
        save_parts(model.parts(), out_dir, self.config)
        if self.config["latent"]["type"] == "vae":
            self.codec_on(torch.device("cpu")).vae.save_pretrained(os.path.join(out_dir, VAE_FOLDER),
                                                                   safe_serialization=True)
        if self.config["attribute"]["encoder"] == "clip":
            self.clip_on(torch.device("cpu")).save_pretrained(os.path.join(out_dir, IMAGE_ENCODER_FOLDER),
                                                               safe_serialization=True)

    # -- helpers ------------------------------------------------------------------------------------

    def _base_unet(self):
        """SD1.5's UNet from the option `unet` (its unet/ subfolder or the folder itself), or None (fresh)."""
        if not self.options["unet"]:
            return None
        from diffusers import UNet2DConditionModel

        from facefab.models.weights import load_model, resolve_checkpoint

        local = resolve_checkpoint(self.options["unet"])
        sub = "unet" if os.path.isdir(os.path.join(local, "unet")) else None
        unet = load_model(UNet2DConditionModel, local, device="cpu", dtype="fp32", subfolder=sub)
        differ = [k for k in ("in_channels", "out_channels", "block_out_channels", "cross_attention_dim")
                  if list(np.atleast_1d(unet.config[k])) != list(np.atleast_1d(self.config["unet"][k]))]
        if differ:
            raise ValueError(f"the UNet of {self.options['unet']} differs from the config in {differ}")
        return unet.train()

    def _clip_hidden(self, images: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        """CLIP's (B, L, hidden) last_hidden_state of (B, 3, S, S) images in [-1, 1], or None (the conv encoder)."""
        if self.config["attribute"]["encoder"] != "clip":
            return None
        with torch.no_grad():
            return self.clip_on(device)(self.clip_input((images + 1) / 2)).last_hidden_state


__all__ = ["DEFAULT_OPTIONS", "GROUPS", "STAGES", "FaceAdapterSystem"]

"""MOFA-Video as `facefab train mofa-video` (the TrainingSystem contract of facefab.training.systems).

The official recipe (MOFA-Video's Training/: svdxt_featureflow_forward_controlnet_s2d_fixcmp_norefine)
trains the adapter (`controlnet`) on SVD-xt clips with the SVD UNet frozen and the pretrained CMP fixed.
Here two stages (`--stage`) pick the trained parameter groups (controlnet, cmp, unet, image_encoder):

- `all` (the default): every part, for a run from scratch (there is no pretrained UNet or CMP to freeze:
  the tiny preset trains all, the CMP end to end through the diffusion loss);
- `adapter`: the official stage, the adapter only, from a pipeline folder with a pretrained UNet (the
  option `init`, e.g. a `facefab convert mofa-video` output; `vae`: SVD's vae/ folder).

    facefab train mofa-video --data ROOT --out CKPT --preset tiny
    facefab train mofa-video --stage adapter --data ROOT --out CKPT --system-options '{"init": "DST", "vae": "DST/vae"}'

Samples (one preprocess row -> `samples_per_clip`, drawn afresh every pass (fixed by option seed); S = config size, F =
config num_frames): target (F,S,S,3) uint8 frames every `stride` frames of the aligned crop, the first one
the reference (SVD image-to-video); sparse / mask (F-1,2,S,S) float32 the keypoint hints (the 68 iBUG
points' motion from the first frame, at their first-frame pixels: models/mofa_video/flow.sparse_hints);
marks (F,S,S,3) uint8 the keypoint images.

Loss: SVD's EDM training: log-normal noise levels (P_mean 0.7, P_std 1.6), the UNet fed the scaled noisy
latents with the (noise-augmented) reference latents, its v-prediction turned into the denoised latents,
weighted (1 + sigma^2) / sigma^2 (which makes it the v-prediction MSE). With probability `uncond_ratio`
per sample the image embedding and the reference latents are dropped (classifier-free guidance).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch

from facefab.models.mofa_video.config import check, paper, tiny
from facefab.models.mofa_video.flow import keypoint_images, sparse_hints
from facefab.models.mofa_video.pipeline import (
    VAE_FOLDER,
    MofaVideoNet,
    TemporalVaeCodec,
    added_time_ids,
    edm_scalings,
    keypoints_of,
    load_parts,
    read_config,
    save_parts,
)
from facefab.models.shared.latents import PixelCodec, VaeCodec, to_unit

from .follow_your_emoji import load_aligned_clip
from .reference_diffusion import COMMON_OPTIONS, Group, ReferenceDiffusionSystem, encode_frames
from .systems import SYSTEMS, sample_rng

log = logging.getLogger(__name__)

DEFAULT_OPTIONS: dict[str, Any] = {
    **COMMON_OPTIONS,
    "stride": 1,              # frames between two frames of a sample
    "p_mean": 0.7,            # log-normal noise levels (SVD's)
    "p_std": 1.6,
    "vae": "",                # SVD's AutoencoderKLTemporalDecoder folder, for configs with latent.type "vae"
}
GROUPS: dict[str, Group] = {name: (lambda part, _rest, _net, name=name: part == name)
                            for name in ("controlnet", "cmp", "unet", "image_encoder")}
STAGES: dict[str, dict[str, Any]] = {"all": {"train": list(GROUPS)}, "adapter": {"train": ["controlnet"]}}


@SYSTEMS.register("mofa-video")
class MofaVideoSystem(ReferenceDiffusionSystem):
    """TrainingSystem for MOFA-Video (see the module docstring). Picklable: the codec is built where used."""

    name = "mofa-video"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": paper(), "tiny": tiny()}
    stages = STAGES
    default_stage = "all"
    default_options = DEFAULT_OPTIONS
    groups = GROUPS
    export_group = "mofa-video"
    init_keys = ("unet", "controlnet", "cmp", "latent", "image_encoder")

    def default_config(self) -> dict[str, Any]:
        return paper()

    def check_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return check(config)

    def fresh_model(self, config: dict[str, Any]) -> MofaVideoNet:
        return MofaVideoNet.fresh(config)

    def read_init(self, folder: str) -> tuple[dict[str, Any], dict[str, torch.nn.Module]]:
        config = read_config(folder)
        return config, load_parts(folder, "cpu", "fp32", config)

    def codec_on(self, device: torch.device) -> PixelCodec | VaeCodec:
        """Pixel latents, or SVD's AutoencoderKLTemporalDecoder from the option `vae`."""
        if self._codec is None and self.config["latent"]["type"] == "vae":
            from diffusers import AutoencoderKLTemporalDecoder

            from facefab.models.weights import load_model

            self._codec = TemporalVaeCodec(load_model(AutoencoderKLTemporalDecoder, self.options["vae"],
                                                      device=device, dtype="fp32"))
        return super().codec_on(device)

    def make_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        size, f, stride = int(self.config["size"]), int(self.config["num_frames"]), int(self.options["stride"])
        clip = load_aligned_clip(row, size, int(self.options["max_frames"]), (f - 1) * stride + 1, storage_options,
                                 self.name)
        if clip is None:
            return []
        span = (f - 1) * stride + 1
        whole = np.convolve(clip["valid"].astype(int), np.ones(span, int), mode="valid") == span
        starts = np.flatnonzero(whole)
        if not len(starts):
            return []
        rng = sample_rng(row, self.options["seed"])
        subset, radius = self.config["keypoints"]["subset"], int(self.config["keypoints"]["radius"])
        samples = []
        for start in rng.choice(starts, size=int(self.options["samples_per_clip"])):
            frames = start + stride * np.arange(f)
            points = keypoints_of(clip["mesh"][frames], subset)
            sparse, mask = sparse_hints(points[0], points[1:], size)
            samples.append({"target": np.ascontiguousarray(clip["crops"][frames]), "sparse": sparse, "mask": mask,
                            "marks": keypoint_images(points, size, radius)})
        return samples

    def loss(self, model: MofaVideoNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        opts, sampling = self.options, self.config["sampling"]
        device = next(model.parameters()).device
        codec = self.codec_on(device)
        frames = batch["target"]
        b, f = frames.shape[:2]
        reference = to_unit(frames[:, 0], device)
        aug = float(sampling["noise_aug_strength"])
        latents = encode_frames(codec, frames, device).transpose(1, 2)  # (B, F, C, h, w)
        with torch.no_grad():
            cond = codec.encode(reference + aug * torch.randn_like(reference)) / getattr(codec, "scale", 1.0)
        keep = (torch.rand(b, device=device) >= float(opts["uncond_ratio"])).float()
        cond = cond * keep.view(-1, 1, 1, 1)
        sigma = (torch.randn(b, device=device) * float(opts["p_std"]) + float(opts["p_mean"])).exp()
        c_in, c_skip, c_out, c_noise = (c.view(-1, 1, 1, 1, 1) for c in edm_scalings(sigma))
        noisy = latents + sigma.view(-1, 1, 1, 1, 1) * torch.randn_like(latents)
        model_input = torch.cat([noisy * c_in, cond[:, None].expand(-1, f, -1, -1, -1)], 2)
        marks = batch["marks"].to(device).float().permute(0, 1, 4, 2, 3) / 255.0
        out = model(model_input, c_noise.flatten(), added_time_ids(sampling, b, device), reference,
                    batch["sparse"].to(device).float(), batch["mask"].to(device).float(), marks, keep_context=keep)
        denoised = out.float() * c_out + noisy * c_skip
        weight = (1 + sigma ** 2) / sigma ** 2
        loss = (weight.view(-1, 1, 1, 1, 1) * (denoised - latents) ** 2).mean()
        return loss, {"denoised_mse": float(((denoised - latents) ** 2).mean().detach())}

    def export(self, model: MofaVideoNet, out_dir: str) -> None:
        """The whole pipeline folder: the parts, pipeline.json, model_index.json (+ vae/)."""
        save_parts(model.parts(), out_dir, self.config)
        if self.config["latent"]["type"] == "vae":
            self.codec_on(torch.device("cpu")).vae.save_pretrained(f"{out_dir}/{VAE_FOLDER}", safe_serialization=True)


__all__ = ["DEFAULT_OPTIONS", "GROUPS", "STAGES", "MofaVideoSystem"]

"""Follow-Your-Emoji as `facefab train follow-your-emoji` (the TrainingSystem contract of
facefab.training.systems): the paper's two training stages as two stages of one system (`--stage`):

- `single` (the default, the paper's stage 1): single frames: the reference net, the denoiser's spatial
  layers and the landmark guider learn to redraw a frame from the reference image and the frame's
  expression-aware landmark image.
- `temporal` (stage 2): clips of `num_frames` frames (the official video_length 16): the motion modules only.

Every stage trains the whole FollowYourEmojiNet (frozen parts included) and exports the whole pipeline
folder (facefab.models.follow_your_emoji.pipeline), merged into CKPT_ROOT/follow-your-emoji/, which
`FollowYourEmojiPipeline.from_pretrained` loads after either stage. The temporal stage continues the first
with the option `init` (that pipeline folder's weights start the run):

    facefab train follow-your-emoji --data ROOT --out CKPT --preset tiny
    facefab train follow-your-emoji --stage temporal --data ROOT --out CKPT --preset tiny --system-options '{"init": "CKPT/follow-your-emoji"}'

Samples (one preprocess row -> `samples_per_clip`, drawn afresh every pass (fixed by option seed); S = config size, F =
num_frames): reference (S,S,3) uint8, a frame of the aligned crop at least `reference_margin` frames from
the target window (fewer in short clips); target (F,S,S,3) uint8 consecutive frames; landmarks
(F,S,S,3) uint8, their landmark images (models/follow_your_emoji/landmarks.py, from frames_uri's meshes);
masks (F,2,S,S) uint8, the face and expression regions of those meshes.

Loss: v-prediction MSE on zero-terminal-SNR DDIM noise (the official scheduler) with a noise offset and
min-SNR weighting, times the paper's facial fine-grained weights (1 + face_loss_weight inside the face +
expression_loss_weight on the eyes and mouth); with probability uncond_ratio a batch is denoised without
the reference (classifier-free guidance, the official unconditional branch). The CLIP context is the zero
token (facefab trains without an image encoder).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from facefab.models.follow_your_emoji.config import check, paper, tiny
from facefab.models.follow_your_emoji.landmarks import draw_landmarks, expression_masks
from facefab.models.follow_your_emoji.pipeline import (
    VAE_FOLDER,
    FollowYourEmojiNet,
    load_parts,
    read_config,
    save_parts,
)
from facefab.models.shared.latents import PixelCodec, VaeCodec, to_unit
from facefab.models.shared.sampling import make_scheduler, training_target

from .dicts import deep_merge
from .systems import SYSTEMS, TrainingSystemBase, sample_rng
from .v_express import _reference_trained, min_snr_weights

log = logging.getLogger(__name__)

DEFAULT_OPTIONS: dict[str, Any] = {
    "num_frames": 1,                # frames per sample (the stage sets it)
    "train": [],                    # parameter groups trained (the stage sets it): see TRAINABLE
    "samples_per_clip": 8,
    "seed": None,                   # None: fresh samples every pass; an int: the same samples every pass (reproducible)
    "max_frames": 250,              # frames decoded per clip
    "reference_margin": 30,         # frames between the reference and the target window
    "uncond_ratio": 0.1,            # batches denoised without the reference (classifier-free guidance)
    "noise_offset": 0.05,
    "snr_gamma": 5.0,               # min-SNR loss weighting; 0: off
    "face_loss_weight": 1.0,        # the facial fine-grained loss: extra weight inside the face ...
    "expression_loss_weight": 1.0,  # ... and on the eyes and mouth
    "init": "",                     # a Follow-Your-Emoji pipeline folder (local or s3://) the run starts from
    "vae": "",                      # SD's AutoencoderKL folder, for configs with latent.type "vae"
}

STAGES: dict[str, dict[str, Any]] = {
    "single": {"num_frames": 1, "train": ["reference_net", "spatial", "lmk_guider"]},
    "temporal": {"num_frames": 16, "train": ["motion"]},
}
DEFAULT_STAGE = "single"

TRAINABLE = {
    "reference_net": lambda part, rest, last_up: part == "reference_net" and _reference_trained(rest, last_up),
    "spatial": lambda part, rest, _: part == "denoising_unet" and ".motion_modules." not in f".{rest}",
    "motion": lambda part, rest, _: part == "denoising_unet" and ".motion_modules." in f".{rest}",
    "lmk_guider": lambda part, rest, _: part == "lmk_guider",
}


def trainable_names(net: FollowYourEmojiNet, groups: list[str]) -> set[str]:
    """Parameter names of `net` the groups train: reference_net (but its last up block and conv_out, whose
    output nothing reads), spatial (the denoiser without its motion modules), motion, lmk_guider."""
    unknown = set(groups) - set(TRAINABLE)
    if unknown:
        raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; known: {list(TRAINABLE)}")
    last_up = len(net.reference_net.up_blocks) - 1
    names = set()
    for name, _ in net.named_parameters():
        part, _, rest = name.partition(".")
        if any(TRAINABLE[group](part, rest, last_up) for group in groups):
            names.add(name)
    return names


def load_aligned_clip(row: dict[str, Any], size: int, max_frames: int, min_frames: int,
                      storage_options: dict | None, system: str) -> dict[str, np.ndarray] | None:
    """A preprocess row's aligned crops at `size` (at most `max_frames`; 0: all) and their meshes in those
    pixels: {"crops" (N,S,S,3) uint8, "mesh" (N,478,2) float32, "valid" (N,) frames with a mesh}; None
    (logged) when fewer than `min_frames` frames or two meshes."""
    from facefab.media import probe, read_frames
    from facefab.operators.track_row import read_frame_table

    for key in ("crop_uri", "frames_uri"):
        if not row.get(key):
            raise ValueError(f"row {row.get('id')!r} has no {key} (run preprocess with the align stage)")
    fps = float(row.get("fps") or probe(row["crop_uri"], storage_options).fps)
    crops = read_frames(row["crop_uri"], end=max_frames / fps if max_frames else None, size=(size, size),
                        storage_options=storage_options)
    track = read_frame_table(row["frames_uri"], storage_options)
    crop_size = int(row.get("crop_size") or probe(row["crop_uri"], storage_options).width)
    mesh = track.landmarks_in_crop(row["frames_uri"])[..., :2] * (size / crop_size)
    n = min(len(crops), len(mesh))
    valid = np.isfinite(mesh[:n]).all(axis=(1, 2))
    if n < min_frames or valid.sum() < 2:
        log.warning("%s: %d frames (%d with landmarks): too few for %s samples", row.get("id"), n, valid.sum(),
                    system)
        return None
    return {"crops": crops[:n], "mesh": mesh[:n].astype(np.float32), "valid": valid}


@SYSTEMS.register("follow-your-emoji")
class FollowYourEmojiSystem(TrainingSystemBase):
    """TrainingSystem for Follow-Your-Emoji (see the module docstring). Picklable: the codec is built where used."""

    name = "follow-your-emoji"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": paper(), "tiny": tiny()}
    stages = STAGES
    export_group = "follow-your-emoji"

    def __init__(self) -> None:
        self.config: dict[str, Any] = paper()
        self.stage = DEFAULT_STAGE
        self.options: dict[str, Any] = deep_merge(DEFAULT_OPTIONS, STAGES[DEFAULT_STAGE])
        self._codec = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_codec": None}

    def default_config(self) -> dict[str, Any]:
        return paper()

    def configure(self, model_config: dict[str, Any] | None = None, stage: str = "",
                  options: dict[str, Any] | None = None) -> None:
        stage = stage or DEFAULT_STAGE
        if stage not in self.stages:
            raise ValueError(f"follow-your-emoji has no stage {stage!r}; stages: {list(self.stages)}")
        unknown = set(options or {}) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown follow-your-emoji option(s) {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
        config = check(dict(model_config) if model_config is not None else paper())
        options = deep_merge(deep_merge(DEFAULT_OPTIONS, self.stages[stage]), options or {})
        if config["latent"]["type"] == "vae" and not options["vae"]:
            raise ValueError("this config encodes with SD's VAE: give its folder as the option "
                             "--system-options '{\"vae\": \"DIR\"}' (or use pixel latents, e.g. --preset tiny)")
        if int(options["num_frames"]) < 1:
            raise ValueError(f"num_frames must be >= 1, got {options['num_frames']}")
        self.config, self.stage, self.options, self._codec = config, stage, options, None

    def build_model(self, model_config: dict[str, Any]) -> FollowYourEmojiNet:
        config = check(dict(model_config))
        net = FollowYourEmojiNet.fresh(config)
        if self.options["init"]:
            self._load_init(net, config)
        elif self.stage != "single":
            log.warning("follow-your-emoji stage %s starts from fresh parts: without the option init (the "
                        "single stage's pipeline folder) its export replaces what that stage trained", self.stage)
        trained = trainable_names(net, list(self.options["train"]))
        for name, param in net.named_parameters():
            param.requires_grad_(name in trained)
        return net

    def make_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        clip = self._load_clip(row, storage_options)
        if clip is None:
            return []
        return self._draw(clip, sample_rng(row, self.options["seed"]), int(self.options["samples_per_clip"]))

    def loss(self, model: FollowYourEmojiNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        opts = self.options
        device = next(model.parameters()).device
        codec = self._codec_on(device)
        scheduler = make_scheduler(self.config["scheduler"])
        target_images = batch["target"]
        b, f = target_images.shape[:2]
        with torch.no_grad():
            latents = codec.encode(to_unit(target_images.flatten(0, 1), device))
            latents = latents.reshape(b, f, *latents.shape[1:]).transpose(1, 2)  # (B, C, F, h, w)
            reference = codec.encode(to_unit(batch["reference"], device))
        landmarks = batch["landmarks"].to(device).float().permute(0, 4, 1, 2, 3) / 255.0  # (B, 3, F, H, W)

        noise = torch.randn_like(latents)
        if opts["noise_offset"]:
            noise = noise + float(opts["noise_offset"]) * torch.randn(b, latents.shape[1], 1, 1, 1, device=device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = training_target(scheduler, latents, noise, timesteps)
        use_reference = bool(torch.rand(()) >= float(opts["uncond_ratio"]))
        prediction = model(noisy, timesteps, reference, landmarks, use_reference=use_reference)

        error = (prediction.float() - target.float()) ** 2
        mse = error.mean()
        weight = self._loss_weights(batch["masks"].to(device), latents.shape[-2:])
        per_sample = (error * weight).flatten(1).mean(1)
        if opts["snr_gamma"]:
            per_sample = per_sample * min_snr_weights(scheduler, timesteps, float(opts["snr_gamma"]))
        return per_sample.mean(), {"mse": float(mse.detach())}

    def export(self, model: FollowYourEmojiNet, out_dir: str) -> None:
        """The whole pipeline folder: the three parts, pipeline.json, model_index.json (+ vae/)."""
        save_parts(model.parts(), out_dir, self.config)
        if self.config["latent"]["type"] == "vae":
            self._codec_on(torch.device("cpu")).vae.save_pretrained(f"{out_dir}/{VAE_FOLDER}", safe_serialization=True)

    # -- helpers ----------------------------------------------------------------------------------

    def _loss_weights(self, masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, F, 2, S, S) 0/1 face / expression masks -> (B, 1, F, h, w) loss weights on the latent grid."""
        b, f = masks.shape[:2]
        area = F.interpolate(masks.flatten(0, 1).float(), size=tuple(grid), mode="area")  # (B*F, 2, h, w)
        gains = torch.tensor([float(self.options["face_loss_weight"]), float(self.options["expression_loss_weight"])],
                             device=masks.device).view(1, 2, 1, 1)
        weight = 1 + (area * gains).sum(1)
        return weight.reshape(b, f, *grid).unsqueeze(1)

    def _codec_on(self, device: torch.device) -> PixelCodec | VaeCodec:
        if self._codec is None:
            latent = self.config["latent"]
            if latent["type"] == "pixel":
                self._codec = PixelCodec(int(latent["factor"]))
            else:
                from diffusers import AutoencoderKL

                from facefab.models.weights import load_model

                self._codec = VaeCodec(load_model(AutoencoderKL, self.options["vae"], device=device, dtype="fp32"))
        return self._codec.to(device)

    def _load_init(self, net: FollowYourEmojiNet, config: dict) -> None:
        from facefab.models.weights import resolve_checkpoint

        local = resolve_checkpoint(self.options["init"])
        theirs = read_config(local)
        for key in ("unet", "motion_preset", "lmk_guider", "latent"):
            if theirs[key] != config[key]:
                raise ValueError(f"init {self.options['init']}: its {key} differs from this run's config "
                                 "(train with the same --preset / --model)")
        for name, part in load_parts(local, "cpu", "fp32").items():
            getattr(net, name).load_state_dict(part.state_dict())

    def _load_clip(self, row: dict[str, Any], storage_options: dict | None) -> dict[str, np.ndarray] | None:
        return load_aligned_clip(row, int(self.config["size"]), int(self.options["max_frames"]),
                                 int(self.options["num_frames"]) + 1, storage_options, self.name)

    def _draw(self, clip: dict[str, np.ndarray], rng: np.random.Generator, count: int) -> list[dict[str, np.ndarray]]:
        f, size = int(self.options["num_frames"]), int(self.config["size"])
        drawing = self.config["landmarks"]
        valid = clip["valid"]
        n = len(valid)
        whole = np.convolve(valid.astype(int), np.ones(f, int), mode="valid") == f  # windows with landmarks
        starts, known = np.flatnonzero(whole), np.flatnonzero(valid)
        if not len(starts):
            return []
        margin = min(int(self.options["reference_margin"]), n // 4)
        samples = []
        for start in rng.choice(starts, size=count):
            end = start + f
            far = known[(known < start - margin) | (known >= end + margin)]
            pool = far if len(far) else known[(known < start) | (known >= end)]
            ref = int(rng.choice(pool if len(pool) else known))
            mesh = clip["mesh"][start:end]
            images = np.stack([draw_landmarks(size, m, bool(drawing.get("iris_point", True)),
                                              bool(drawing.get("forehead_edge", False))) for m in mesh])
            samples.append({"reference": np.ascontiguousarray(clip["crops"][ref]),
                            "target": np.ascontiguousarray(clip["crops"][start:end]),
                            "landmarks": images, "masks": expression_masks(mesh, size)})
        return samples


__all__ = ["DEFAULT_OPTIONS", "STAGES", "FollowYourEmojiSystem", "load_aligned_clip", "trainable_names"]

"""Hallo as `facefab train hallo` (the TrainingSystem contract of facefab.training.systems): the paper's
two training stages as two stages of ONE system (`--stage`, config overrides, like facevid2vid), because
both train the same network (HalloNet) and export the same pipeline folder; only the data shape and the
trained parameter groups differ:

- `stage1`: single frames (scripts/train_stage1.py): the reference net (less its last up block, whose
  output nothing reads), the denoiser's spatial layers, the face locator and the image projection learn
  to redraw a frame from a reference frame of the clip and the face region. No motion frames, no audio.
- `stage2` (the default, the last one): clips of `num_frames` frames, each with the `motion_frames`
  frames before it (scripts/train_stage2.py): the motion modules, the audio modules and the audio
  projection only; the rest is frozen.

Every stage builds and exports the whole HalloNet as a HalloPipeline folder (facefab.models.hallo.pipeline),
merged into CKPT_ROOT/hallo/ (`export_group`), which `HalloPipeline.from_pretrained` loads after either
stage. A stage continues the previous one with the option `init` (a pipeline folder, local or s3://);
stage2 without it starts from fresh parts and warns, since its export replaces what stage1 trained:

    facefab train hallo --stage stage1 --data ROOT --out CKPT --preset tiny
    facefab train hallo --data ROOT --out CKPT --preset tiny --system-options '{"init": "CKPT/hallo"}'

Samples (one preprocess row -> `samples_per_clip`, drawn afresh every pass (fixed by option seed); S = config size, F =
num_frames, k = motion_frames): reference (S,S,3) uint8, a frame at least `reference_margin` frames from
the target (fewer in short clips); target (F,S,S,3) uint8 consecutive frames of the aligned crop video;
motion (k,S,S,3) uint8, the k frames before the target (stage2); face_region (S,S) uint8, the clip's
face box (the union over its frames, as the official union masks); and in stage2 speech (F, seq_len,
blocks, 80) float32 standardised log-mel features (audio_features_uri, else the crop's own audio, via
`clip_mel_windows`) and region_masks (3,M,M) float32, the pose / face / lip weights of the audio attention.
Masks come from frames_uri's landmarks (models/hallo/masks.py).

Loss (official): v-prediction MSE on zero-terminal-SNR DDIM noise with a noise offset and min-SNR
weighting; with probability uncond_image_ratio a sample loses its reference tokens, face embedding
and face-region features, with uncond_audio_ratio its audio tokens, and with start_ratio its motion
frames are blank (the first window of a video). The face embedding is zeros (no ArcFace offline).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch

from facefab.models.hallo.config import FACE_EMBEDDING_DIM, check, paper, tiny
from facefab.models.hallo.masks import box_image, region_boxes, region_masks
from facefab.models.hallo.net import HalloNet
from facefab.models.hallo.pipeline import VAE_FOLDER, load_parts, read_config, save_parts, standardised_mel
from facefab.models.shared.latents import PixelCodec, VaeCodec, to_unit
from facefab.models.shared.sampling import make_scheduler, training_target

from .dicts import deep_merge
from .mytalk import clip_mel_windows
from .systems import SYSTEMS, TrainingSystemBase, sample_rng
from .v_express import min_snr_weights

log = logging.getLogger(__name__)

DEFAULT_OPTIONS: dict[str, Any] = {
    "num_frames": 14,            # frames per sample (official stage 2: n_sample_frames 14)
    "motion_frames": 2,          # frames before the target given as motion frames (n_motion_frames)
    "speech": True,              # samples carry speech features and region masks (stage 2)
    "train": [],                 # parameter groups trained (the stage sets it): see TRAINABLE
    "samples_per_clip": 8,       # samples drawn from one clip per pass over the data
    "seed": None,                # None: fresh samples every pass; an int: the same samples every pass (reproducible)
    "max_frames": 250,           # frames decoded per clip
    "reference_margin": 30,      # frames between the reference and the target (official sample_margin)
    "uncond_image_ratio": 0.05,
    "uncond_audio_ratio": 0.05,
    "start_ratio": 0.05,         # motion frames blanked
    "noise_offset": 0.05,
    "snr_gamma": 5.0,            # min-SNR loss weighting; 0: off
    "init": "",                  # a Hallo pipeline folder (local or s3://) the run starts from
    "vae": "",                   # SD's AutoencoderKL folder, for configs with latent.type "vae"
}

STAGES: dict[str, dict[str, Any]] = {
    "stage1": {"num_frames": 1, "motion_frames": 0, "speech": False, "uncond_image_ratio": 0.1,
               "uncond_audio_ratio": 0.0, "start_ratio": 0.0,
               "train": ["reference_unet", "spatial", "face_locator", "imageproj"]},
    "stage2": {"train": ["motion", "audio", "audioproj"]},
}
DEFAULT_STAGE = "stage2"


def _reference_trained(rest: str, last_up_block: int) -> bool:
    # the last up block only feeds conv_out, whose output nothing reads (AnimateAnyone freezes it too)
    return not rest.startswith((f"up_blocks.{last_up_block}.", "conv_norm_out.", "conv_out."))


TRAINABLE = {
    "reference_unet": lambda part, rest, last_up: part == "reference_unet" and _reference_trained(rest, last_up),
    "spatial": lambda part, rest, _: part == "denoising_unet" and ".motion_modules." not in f".{rest}"
    and ".audio_modules." not in f".{rest}",
    "motion": lambda part, rest, _: part == "denoising_unet" and ".motion_modules." in f".{rest}",
    "audio": lambda part, rest, _: part == "denoising_unet" and ".audio_modules." in f".{rest}",
    "face_locator": lambda part, rest, _: part == "face_locator",
    "imageproj": lambda part, rest, _: part == "imageproj",
    "audioproj": lambda part, rest, _: part == "audioproj",
}


def trainable_names(net: HalloNet, groups: list[str]) -> set[str]:
    """Parameter names of `net` the groups train (TRAINABLE: reference_unet, spatial (the denoiser less its
    motion and audio modules), motion, audio, face_locator, imageproj, audioproj)."""
    unknown = set(groups) - set(TRAINABLE)
    if unknown:
        raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; known: {list(TRAINABLE)}")
    last_up = len(net.reference_unet.up_blocks) - 1
    names = set()
    for name, _ in net.named_parameters():
        part, _, rest = name.partition(".")
        if any(TRAINABLE[group](part, rest, last_up) for group in groups):
            names.add(name)
    return names


@SYSTEMS.register("hallo")
class HalloSystem(TrainingSystemBase):
    """TrainingSystem for Hallo (see the module docstring). Picklable: the codec is built where used."""

    name = "hallo"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": paper(), "tiny": tiny()}
    stages = STAGES
    export_group = "hallo"

    def __init__(self) -> None:
        self.config: dict[str, Any] = paper()
        self.stage = DEFAULT_STAGE
        self.options: dict[str, Any] = deep_merge(DEFAULT_OPTIONS, STAGES[DEFAULT_STAGE])
        self._codec = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_codec": None}

    # -- protocol ---------------------------------------------------------------------------------

    def default_config(self) -> dict[str, Any]:
        return paper()

    def configure(self, model_config: dict[str, Any] | None = None, stage: str = "",
                  options: dict[str, Any] | None = None) -> None:
        stage = stage or DEFAULT_STAGE
        if stage not in self.stages:
            raise ValueError(f"hallo has no stage {stage!r}; stages: {list(self.stages)}")
        unknown = set(options or {}) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown hallo option(s) {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
        config = check(dict(model_config) if model_config is not None else paper())
        if config["audio"]["features"] != "mel":
            raise ValueError("hallo trains on facefab's log-mel speech features (audio.features 'mel'); "
                             f"got {config['audio']['features']!r}")
        options = deep_merge(deep_merge(DEFAULT_OPTIONS, self.stages[stage]), options or {})
        if config["latent"]["type"] == "vae" and not options["vae"]:
            raise ValueError("this config encodes with SD's VAE: give its folder as the option "
                             "--system-options '{\"vae\": \"DIR\"}' (or use pixel latents, e.g. --preset tiny)")
        if int(options["num_frames"]) < 1 or int(options["motion_frames"]) < 0:
            raise ValueError("num_frames must be >= 1 and motion_frames >= 0")
        self.config, self.stage, self.options, self._codec = config, stage, options, None

    def build_model(self, model_config: dict[str, Any]) -> HalloNet:
        config = check(dict(model_config))
        net = HalloNet.fresh(config)
        if self.options["init"]:
            self._load_init(net, config)
        elif self.stage != "stage1":
            log.warning("hallo stage %s starts from fresh parts: without the option init (the previous stage's "
                        "pipeline folder) its export replaces what stage1 trained", self.stage)
        trained = trainable_names(net, list(self.options["train"]))
        for name, param in net.named_parameters():
            param.requires_grad_(name in trained)
        return net

    def make_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        clip = self._load_clip(row, storage_options)
        if clip is None:
            return []
        return self._draw(clip, sample_rng(row, self.options["seed"]), int(self.options["samples_per_clip"]))

    def loss(self, model: HalloNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        opts = self.options
        device = next(model.parameters()).device
        codec = self._codec_on(device)
        scheduler = make_scheduler(self.config["scheduler"])
        b, f = batch["target"].shape[:2]
        with torch.no_grad():
            latents = codec.encode(to_unit(batch["target"].flatten(0, 1), device))
            latents = latents.reshape(b, f, *latents.shape[1:]).transpose(1, 2)  # (B, C, F, h, w)
            reference = codec.encode(to_unit(batch["reference"], device))
            motion = None
            if "motion" in batch:
                k = batch["motion"].shape[1]
                pixels = to_unit(batch["motion"].flatten(0, 1), device)
                started = (torch.rand(b) < float(opts["start_ratio"])).repeat_interleave(k).to(device)
                pixels = pixels * (~started).to(pixels).view(-1, 1, 1, 1)  # a blank (grey) start
                motion = codec.encode(pixels)
                motion = motion.reshape(b, k, *motion.shape[1:]).transpose(1, 2)

        noise = torch.randn_like(latents)
        if opts["noise_offset"]:
            noise = noise + float(opts["noise_offset"]) * torch.randn(b, latents.shape[1], 1, 1, 1, device=device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = training_target(scheduler, latents, noise, timesteps)

        keep_image = (torch.rand(b) >= float(opts["uncond_image_ratio"])).float().to(device)
        keep_audio = (torch.rand(b) >= float(opts["uncond_audio_ratio"])).float().to(device)
        face_region = batch["face_region"][:, None].to(device=device, dtype=torch.float32)
        embedding = torch.zeros(b, FACE_EMBEDDING_DIM, device=device)
        speech = batch["speech"].to(device) if "speech" in batch else None
        masks = batch["region_masks"].to(device) if "region_masks" in batch else None
        prediction = model(noisy, timesteps, reference, motion, face_region, embedding, speech, masks,
                           keep_image, keep_audio)

        error = ((prediction.float() - target.float()) ** 2).flatten(1).mean(1)
        mse = float(error.mean().detach())
        if opts["snr_gamma"]:
            error = error * min_snr_weights(scheduler, timesteps, float(opts["snr_gamma"]))
        return error.mean(), {"mse": mse}

    def export(self, model: HalloNet, out_dir: str) -> None:
        """The whole pipeline folder: the five parts, pipeline.json, model_index.json (+ vae/)."""
        save_parts(model.parts(), out_dir, self.config)
        if self.config["latent"]["type"] == "vae":
            codec = self._codec_on(torch.device("cpu"))
            codec.vae.save_pretrained(f"{out_dir}/{VAE_FOLDER}", safe_serialization=True)

    # -- helpers ----------------------------------------------------------------------------------

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

    def _load_init(self, net: HalloNet, config: dict) -> None:
        from facefab.models.weights import resolve_checkpoint

        local = resolve_checkpoint(self.options["init"])
        theirs = read_config(local)
        for key in ("size", "unet", "motion_preset", "face_locator", "image_proj", "audio_proj", "latent"):
            if theirs[key] != config[key]:
                raise ValueError(f"init {self.options['init']}: its {key} differs from this run's config "
                                 "(train with the same --preset / --model)")
        for name, part in load_parts(local, "cpu", "fp32").items():
            getattr(net, name).load_state_dict(part.state_dict())

    def _load_clip(self, row: dict[str, Any], storage_options: dict | None) -> dict[str, Any] | None:
        from facefab.media import probe, read_frames
        from facefab.operators.track_row import read_frame_table

        for key in ("crop_uri", "frames_uri"):
            if not row.get(key):
                raise ValueError(f"row {row.get('id')!r} has no {key} (run preprocess with the align stage)")
        size = int(self.config["size"])
        fps = float(row.get("fps") or probe(row["crop_uri"], storage_options).fps)
        max_frames = int(self.options["max_frames"])
        crops = read_frames(row["crop_uri"], end=max_frames / fps if max_frames else None, size=(size, size),
                            storage_options=storage_options)
        track = read_frame_table(row["frames_uri"], storage_options)
        crop_size = int(row.get("crop_size") or probe(row["crop_uri"], storage_options).width)
        mesh = track.landmarks_in_crop(row["frames_uri"])[..., :2] * (size / crop_size)
        n = min(len(crops), len(mesh))
        valid = np.isfinite(mesh[:n]).all(axis=(1, 2))
        f, k = int(self.options["num_frames"]), int(self.options["motion_frames"])
        if n < f + k + 1 or valid.sum() < 2:
            log.warning("%s: %d frames (%d with landmarks): too few for hallo samples of %d + %d frames",
                        row.get("id"), n, valid.sum(), f, k)
            return None
        masks = self.config["masks"]
        face_box, lip_box = region_boxes(mesh[:n][valid], size, **masks)
        clip = {"crops": crops[:n], "valid": valid,
                "face_region": box_image(face_box, size).astype(np.uint8)}
        if self.options["speech"]:
            proj = self.config["audio_proj"]
            window = int(proj["seq_len"]) * int(proj["blocks"]) + 1
            clip["speech"] = standardised_mel(clip_mel_windows(row, storage_options, track.frame_index[:n], window),
                                              self.config)
            clip["region_masks"] = region_masks(face_box, lip_box, size, **masks)
        return clip

    def _draw(self, clip: dict[str, Any], rng: np.random.Generator, count: int) -> list[dict[str, np.ndarray]]:
        f, k = int(self.options["num_frames"]), int(self.options["motion_frames"])
        valid = clip["valid"]
        n = len(valid)
        whole = np.convolve(valid.astype(int), np.ones(f, int), mode="valid") == f  # windows with landmarks
        starts, known = np.flatnonzero(whole), np.flatnonzero(valid)
        starts = starts[starts >= k]
        if not len(starts):
            return []
        margin = min(int(self.options["reference_margin"]), n // 4)
        samples = []
        for start in rng.choice(starts, size=count):
            end = start + f
            far = known[(known < start - margin) | (known >= end + margin)]
            pool = far if len(far) else known[(known < start) | (known >= end)]
            reference = int(rng.choice(pool if len(pool) else known))
            sample = {"reference": clip["crops"][reference], "target": clip["crops"][start:end],
                      "face_region": clip["face_region"]}
            if k:
                sample["motion"] = clip["crops"][start - k:start]
            if self.options["speech"]:
                sample["speech"] = clip["speech"][start:end]
                sample["region_masks"] = clip["region_masks"]
            samples.append({key: np.ascontiguousarray(v) for key, v in sample.items()})
        return samples


__all__ = ["DEFAULT_OPTIONS", "STAGES", "TRAINABLE", "HalloSystem", "trainable_names"]

"""V-Express as `facefab train v-express` (the TrainingSystem contract of facefab.training.systems): the
paper's progressive training as three stages of one system (`--stage`, config overrides):

- `single`: single frames: the reference net, the denoiser's spatial layers (not its audio attention)
  and the V-kps guider learn to redraw a frame from the reference image and the frame's V-kps.
- `temporal`: clips of `num_frames` frames: the motion modules only.
- `audio` (the default): the audio projection and the audio attention (the denoiser's spatial attn2 and
  its norm) only. (The official configs also train the audio parts in stage 2 and everything in
  stage 3; facefab keeps the three parts apart.)

Every stage trains the whole VExpressNet (frozen parts included) and exports the whole pipeline folder
(facefab.models.v_express.pipeline), merged into CKPT_ROOT/v-express/ (`export_group`), which
`VExpressPipeline.from_pretrained` loads after any stage. A stage continues the previous one with the
option `init`: that pipeline folder's weights start the run (a later stage without it starts from fresh
parts and warns, as its export would replace the earlier stages' weights):

    facefab train v-express --stage single --data ROOT --out CKPT --preset tiny
    facefab train v-express --stage temporal --data ROOT --out CKPT --preset tiny --system-options '{"init": "CKPT/v-express"}'
    facefab train v-express --data ROOT --out CKPT --preset tiny --system-options '{"init": "CKPT/v-express"}'

Samples (one preprocess row -> `samples_per_clip`, drawn afresh every pass (fixed by option seed); S = config size, F =
num_frames, L = speech tokens per frame): reference (S,S,3) uint8, a frame of the aligned crop video at
least `reference_margin` frames from the target window (fewer in short clips); target (F,S,S,3) uint8
consecutive frames; kps (F,3,2) float32 V-kps in pixels (from frames_uri's landmarks; drawn into images
in the loss); speech (F,L,80) float32 standardised log-mel tokens (audio_features_uri, else the crop's
own audio, via `clip_mel_windows`); lip_box (F,4) float32, the lips' box doubled, in [0, 1]. A random
horizontal flip mirrors images and keypoints together (the eyes swap, as the official kps channel swap).

Loss (official train.py): v-prediction MSE on zero-terminal-SNR DDIM noise with a noise offset,
min-SNR weighting (snr_gamma), an optional lip-box weight; with probability uncond_ratio a sample loses
all conditions (reference tokens, kps features, audio context), and kps_drop_rate / reference_drop_rate
drop one (V-Express' conditional dropout).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch

from facefab.face.mesh import to_68
from facefab.models.shared.latents import PixelCodec, VaeCodec, to_unit
from facefab.models.shared.sampling import make_scheduler, training_target
from facefab.models.v_express.config import audio_tokens, check, paper, tiny
from facefab.models.v_express.pipeline import VAE_FOLDER, VExpressNet, load_parts, mel_tokens, read_config, save_parts
from facefab.models.v_express.v_kps_guider import kps_images, v_kps_points

from .dicts import deep_merge
from .mytalk import clip_mel_windows
from .systems import SYSTEMS, TrainingSystemBase, sample_rng

log = logging.getLogger(__name__)

DEFAULT_OPTIONS: dict[str, Any] = {
    "num_frames": 8,            # frames per sample (the stage sets it)
    "train": [],                # parameter groups trained (the stage sets it): see TRAINABLE
    "samples_per_clip": 8,      # samples drawn from one clip per pass over the data
    "seed": None,               # None: fresh samples every pass; an int: the same samples every pass (reproducible)
    "max_frames": 250,          # frames decoded per clip
    "reference_margin": 30,     # frames between the reference and the target window (official)
    "flip_rate": 0.5,
    "uncond_ratio": 0.1,        # all conditions dropped (classifier-free guidance)
    "kps_drop_rate": 0.0,
    "reference_drop_rate": 0.0,
    "noise_offset": 0.05,
    "snr_gamma": 5.0,           # min-SNR loss weighting; 0: off
    "lip_loss_weight": 1.0,     # loss weight inside the lip box (1: none)
    "init": "",                 # a V-Express pipeline folder (local or s3://) the run starts from
    "vae": "",                  # SD's AutoencoderKL folder, for configs with latent.type "vae"
}

STAGES: dict[str, dict[str, Any]] = {
    "single": {"num_frames": 1, "train": ["reference_net", "spatial", "v_kps_guider"]},
    "temporal": {"num_frames": 20, "train": ["motion"]},          # the official stage 2 clip length
    "audio": {"num_frames": 8, "train": ["audio_projection", "audio_attention"]},
}
DEFAULT_STAGE = "audio"


def _audio_attention(name: str) -> bool:
    return ".attentions." in name and (".attn2." in name or ".norm2." in name)


def _reference_trained(name: str, last_up_block: int) -> bool:
    # the last up block only feeds conv_out, whose output nothing reads (the official freezes up_blocks.3)
    return not name.startswith((f"up_blocks.{last_up_block}.", "conv_norm_out.", "conv_out."))


def trainable_names(net: VExpressNet, groups: list[str]) -> set[str]:
    """Parameter names of `net` the groups train: reference_net, spatial (the denoiser without its motion
    modules and audio attention), motion, audio_attention, v_kps_guider, audio_projection."""
    unknown = set(groups) - set(TRAINABLE)
    if unknown:
        raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; known: {list(TRAINABLE)}")
    last_up = len(net.reference_net.up_blocks) - 1
    names = set()
    for name, _ in net.named_parameters():
        part, _, rest = name.partition(".")
        for group in groups:
            if TRAINABLE[group](part, rest, last_up):
                names.add(name)
    return names


TRAINABLE = {
    "reference_net": lambda part, rest, last_up: part == "reference_net" and _reference_trained(rest, last_up),
    "spatial": lambda part, rest, _: part == "denoising_unet" and ".motion_modules." not in f".{rest}"
    and not _audio_attention(f".{rest}"),
    "motion": lambda part, rest, _: part == "denoising_unet" and ".motion_modules." in f".{rest}",
    "audio_attention": lambda part, rest, _: part == "denoising_unet" and _audio_attention(f".{rest}"),
    "v_kps_guider": lambda part, rest, _: part == "v_kps_guider",
    "audio_projection": lambda part, rest, _: part == "audio_projection",
}


def lip_boxes(mesh: np.ndarray, size: int, scale: float = 2.0) -> np.ndarray:
    """(T, 478, 2) crop-pixel mesh -> (T, 4) [x0, y0, x1, y1] in [0, 1]: the lips' box (iBUG 48-67)
    scaled `scale` times about its centre (the official lip mask)."""
    lips = to_68(mesh)[:, 48:68]
    lo, hi = lips.min(axis=1), lips.max(axis=1)
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * scale
    return np.clip(np.concatenate([centre - half, centre + half], axis=1) / size, 0, 1).astype(np.float32)


def box_masks(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, F, 4) boxes in [0, 1] -> (B, 1, F, h, w) 0/1 masks on the latent grid."""
    ys = (torch.arange(h, device=boxes.device) + 0.5) / h
    xs = (torch.arange(w, device=boxes.device) + 0.5) / w
    inside_y = (ys >= boxes[..., 1, None]) & (ys <= boxes[..., 3, None])
    inside_x = (xs >= boxes[..., 0, None]) & (xs <= boxes[..., 2, None])
    return (inside_y[..., :, None] & inside_x[..., None, :]).unsqueeze(1).float()


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023; v-prediction divides by SNR + 1)."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas).clamp_min(1e-8)
    if scheduler.config.prediction_type == "v_prediction":
        snr = snr + 1
    return torch.minimum(snr, torch.full_like(snr, gamma)) / snr.clamp_min(1e-8)


@SYSTEMS.register("v-express")
class VExpressSystem(TrainingSystemBase):
    """TrainingSystem for V-Express (see the module docstring). Picklable: the codec is built where used."""

    name = "v-express"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": paper(), "tiny": tiny()}
    stages = STAGES
    export_group = "v-express"

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
            raise ValueError(f"v-express has no stage {stage!r}; stages: {list(self.stages)}")
        unknown = set(options or {}) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown v-express option(s) {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
        config = check(dict(model_config) if model_config is not None else paper())
        if config["audio"]["features"] != "mel":
            raise ValueError("v-express trains on facefab's log-mel speech features (audio.features 'mel'); "
                             f"got {config['audio']['features']!r}")
        options = deep_merge(deep_merge(DEFAULT_OPTIONS, self.stages[stage]), options or {})
        if config["latent"]["type"] == "vae" and not options["vae"]:
            raise ValueError("this config encodes with SD's VAE: give its folder as the option "
                             "--system-options '{\"vae\": \"DIR\"}' (or use pixel latents, e.g. --preset tiny)")
        if int(options["num_frames"]) < 1:
            raise ValueError(f"num_frames must be >= 1, got {options['num_frames']}")
        self.config, self.stage, self.options, self._codec = config, stage, options, None

    def build_model(self, model_config: dict[str, Any]) -> VExpressNet:
        config = check(dict(model_config))
        net = VExpressNet.fresh(config)
        if self.options["init"]:
            self._load_init(net, config)
        elif self.stage != "single":
            log.warning("v-express stage %s starts from fresh parts: without the option init (the previous "
                        "stage's pipeline folder) its export replaces what the earlier stages trained", self.stage)
        trained = trainable_names(net, list(self.options["train"]))
        for name, param in net.named_parameters():
            param.requires_grad_(name in trained)
        return net

    def make_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        clip = self._load_clip(row, storage_options)
        if clip is None:
            return []
        return self._draw(clip, sample_rng(row, self.options["seed"]), int(self.options["samples_per_clip"]))

    def loss(self, model: VExpressNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        opts, size = self.options, int(self.config["size"])
        device = next(model.parameters()).device
        codec = self._codec_on(device)
        scheduler = make_scheduler(self.config["scheduler"])
        target_images = batch["target"]
        b, f = target_images.shape[:2]
        with torch.no_grad():
            latents = codec.encode(to_unit(target_images.flatten(0, 1), device))
            latents = latents.reshape(b, f, *latents.shape[1:]).transpose(1, 2)  # (B, C, F, h, w)
            reference = codec.encode(to_unit(batch["reference"], device))
        kps = torch.from_numpy(kps_images(batch["kps"].cpu().numpy(), size)).to(device).transpose(1, 2)

        noise = torch.randn_like(latents)
        if opts["noise_offset"]:
            noise = noise + float(opts["noise_offset"]) * torch.randn(b, latents.shape[1], 1, 1, 1, device=device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = training_target(scheduler, latents, noise, timesteps)

        keep = (torch.rand(b) >= float(opts["uncond_ratio"])).float()
        keep_reference = keep * (torch.rand(b) >= float(opts["reference_drop_rate"])).float()
        keep_kps = keep * (torch.rand(b) >= float(opts["kps_drop_rate"])).float()
        prediction = model(noisy, timesteps, reference, kps, batch["speech"].to(device), keep_reference.to(device),
                           keep_kps.to(device), keep.to(device))

        error = (prediction.float() - target.float()) ** 2
        mse = error.mean()
        if float(opts["lip_loss_weight"]) != 1.0:
            mask = box_masks(batch["lip_box"].to(device).float(), *latents.shape[-2:])
            error = error * ((float(opts["lip_loss_weight"]) - 1) * mask + 1)
        per_sample = error.flatten(1).mean(1)
        if opts["snr_gamma"]:
            per_sample = per_sample * min_snr_weights(scheduler, timesteps, float(opts["snr_gamma"]))
        return per_sample.mean(), {"mse": float(mse.detach())}

    def export(self, model: VExpressNet, out_dir: str) -> None:
        """The whole pipeline folder: the four parts, pipeline.json, model_index.json (+ vae/)."""
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

    def _load_init(self, net: VExpressNet, config: dict) -> None:
        from facefab.models.weights import resolve_checkpoint

        local = resolve_checkpoint(self.options["init"])
        theirs = read_config(local)
        for key in ("unet", "motion_preset", "v_kps_guider", "audio_projection", "latent"):
            if theirs[key] != config[key]:
                raise ValueError(f"init {self.options['init']}: its {key} differs from this run's config "
                                 "(train with the same --preset / --model)")
        for name, part in load_parts(local, "cpu", "fp32").items():
            getattr(net, name).load_state_dict(part.state_dict())

    def _load_clip(self, row: dict[str, Any], storage_options: dict | None) -> dict[str, np.ndarray] | None:
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
        tokens, _ = audio_tokens(self.config)
        speech = mel_tokens(clip_mel_windows(row, storage_options, track.frame_index, tokens + 1), self.config)
        n = min(len(crops), len(mesh), len(speech))
        valid = np.isfinite(mesh[:n]).all(axis=(1, 2))
        if n < int(self.options["num_frames"]) + 1 or valid.sum() < 2:
            log.warning("%s: %d frames (%d with landmarks): too few for v-express samples", row.get("id"), n,
                        valid.sum())
            return None
        mesh = np.where(valid[:, None, None], mesh[:n], 0.0)  # frames without landmarks are never drawn
        return {"crops": crops[:n], "kps": v_kps_points(mesh), "speech": speech[:n],
                "lip_box": lip_boxes(mesh, size), "valid": valid}

    def _draw(self, clip: dict[str, np.ndarray], rng: np.random.Generator, count: int) -> list[dict[str, np.ndarray]]:
        f, size = int(self.options["num_frames"]), int(self.config["size"])
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
            window = slice(start, end)
            sample = {"reference": clip["crops"][ref], "target": clip["crops"][window],
                      "kps": clip["kps"][window], "speech": clip["speech"][window], "lip_box": clip["lip_box"][window]}
            if rng.random() < float(self.options["flip_rate"]):
                sample = _flipped(sample, size)
            samples.append({k: np.ascontiguousarray(v) for k, v in sample.items()})
        return samples


def _flipped(sample: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """The sample mirrored left-right: images, keypoints (the two eyes swap places in the order, so the
    first stays the image-left eye) and lip boxes."""
    kps = sample["kps"][:, [1, 0, 2]].copy()
    kps[..., 0] = size - 1 - kps[..., 0]
    box = sample["lip_box"].copy()
    box[:, [0, 2]] = 1 - sample["lip_box"][:, [2, 0]]
    return {**sample, "reference": sample["reference"][:, ::-1], "target": sample["target"][:, :, ::-1],
            "kps": kps, "lip_box": box}


__all__ = ["DEFAULT_OPTIONS", "STAGES", "VExpressSystem", "box_masks", "lip_boxes", "min_snr_weights",
           "trainable_names"]

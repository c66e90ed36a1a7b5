"""BeautyREC as `facefab train beautyrec` (the TrainingSystem contract of facefab.training.systems).

Unpaired training, as the paper's: no made-up version of a source exists, so the losses compare the output
with the source (content) and with the reference (the colours of each makeup component).

Samples (one preprocess row -> `samples_per_clip`, drawn afresh every pass (fixed by option seed);
S = config image_size):
source (S,S,3) uint8 a frame of the row's aligned crop video (crop_uri), source_labels (S,S) uint8 its
parsing labels (masks_uri, facefab.face.parsing.LABEL_NAMES); reference / reference_labels the same of a
frame of ANOTHER clip of the same manifest (found by the artifact layout, ROOT/artifacts/<kind>/xx/<id>.*,
and read once per process); when the manifest has no other clip, a distant frame of the same clip,
colour-jittered. Talking-head data wears little makeup, so with probability `synthetic_makeup` the
reference gets random makeup first (lips, eye shadow, foundation moved to random Lab colours): the model
then sees references whose components differ from the source's.

Losses (weights in options["weights"]):
- lips / skin / eyes: the makeup loss of BeautyGAN and BeautyREC. Pseudo ground truth: the source's pixels
  of the component histogram-matched (per channel, by rank) to the reference's pixels of that component;
  L1 between the output and it inside the source's component mask (mean over the mask).
- perceptual: L1 between features of the output and of the source (content kept). The feature extractor is
  option `perceptual`: "random-conv" (default; a fixed, seeded 3-layer random conv net: needs no weights,
  works offline, and random conv features are a usable perceptual metric), "vgg16" / "vgg19" (torchvision's
  VGG up to relu4_1, as the official's r41; weights from the local file `perceptual_weights`, a torchvision
  state dict .pth or .safetensors), "pixel" (the images themselves), "none" (off).
- unchanged: the same feature L1 inside brows, eyes and inner mouth (the official "unchanged" regions).
- content: L1 between the content codes of the source and of the output (the official content loss).
- adversarial (0 by default): LSGAN with one global PatchGAN discriminator (the official trains five: global,
  lips, skin and each eye). When its weight is > 0 the trained module is `BeautyRECTrainee` (net +
  discriminator, so DeepSpeed optimises both with the one loss): the discriminator's loss uses the detached
  output, the generator's adversarial term reads the discriminator through detached parameters, so each
  term moves only its own side.

Evaluation (held-out clips): the lip colour distance (Lab, mean over the lips) of output to reference, and
of the source to the reference, over deterministic pairs.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facefab.face.parsing import LABELS
from facefab.models.beautyrec.model import COMPONENTS, TINY_CONFIG, BeautyRECNet, component_masks
from facefab.models.beautyrec.pipeline import save_pipeline
from facefab.models.shared.latents import to_unit

from .dicts import deep_merge
from .systems import SYSTEMS, TrainingSystemBase, sample_rng

log = logging.getLogger(__name__)

DEFAULT_OPTIONS: dict[str, Any] = {
    "samples_per_clip": 16,     # samples drawn from one clip per pass over the data
    "seed": None,               # None: fresh samples every pass; an int: the same samples every pass (reproducible)
    "eval_pairs": 4,            # deterministic pairs per held-out clip
    "max_frames": 150,          # frames decoded per clip
    "reference_clips": 2,       # other clips a row's references are drawn from
    "synthetic_makeup": 0.8,    # probability that a reference gets random makeup first
    "jitter": 0.1,              # colour jitter of a same-clip reference (gain / offset share)
    "perceptual": "random-conv",  # random-conv | vgg16 | vgg19 | pixel | none
    "perceptual_weights": "",   # local torchvision VGG state dict for vgg16 / vgg19
    "weights": {"lips": 1.0, "skin": 0.1, "eyes": 1.0, "perceptual": 1.0, "unchanged": 1.0, "content": 1.0,
                "adversarial": 0.0},
    "min_region_px": 8,         # a component with fewer pixels (source or reference) gives no makeup loss
}
UNCHANGED = ("left_brow", "right_brow", "left_eye", "right_eye", "inner_mouth")
# synthetic makeup: Lab chroma of the random lip colour, eye-shadow opacity, foundation shift
LIP_CHROMA, EYE_OPACITY, FOUNDATION_SHIFT = (15.0, 45.0), (0.3, 0.7), 4.0


# -- pseudo ground truth, features, discriminator ------------------------------------------------------

def histogram_matched(source: torch.Tensor, reference: torch.Tensor, source_mask: torch.Tensor,
                      reference_mask: torch.Tensor, min_px: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(source with its pixels inside `source_mask` moved, per channel and by rank, onto the values of the
    reference's pixels inside `reference_mask`; (B,) bool: the samples where both masks have `min_px`).
    Images (B, C, H, W), masks (B, H, W); no gradient."""
    out = source.detach().clone()
    valid = torch.zeros(len(source), dtype=torch.bool, device=source.device)
    for b in range(len(source)):
        inside, theirs = source_mask[b] > 0.5, reference_mask[b] > 0.5
        n, m = int(inside.sum()), int(theirs.sum())
        if n < min_px or m < min_px:
            continue
        pixels = out[b][:, inside]
        quantile = pixels.argsort(1).argsort(1).float() / max(n - 1, 1)
        values = reference[b].detach()[:, theirs].sort(1).values
        out[b][:, inside] = values.gather(1, (quantile * (m - 1)).round().long())
        valid[b] = True
    return out, valid


VGG_LAYERS = {"vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512),  # up to conv4_1 (+ relu)
              "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """torchvision's VGG `features` up to relu4_1 (the same indices, so its state dict loads), on [-1, 1]
    images."""

    def __init__(self, layers: tuple):
        super().__init__()
        modules, channels = [], 3
        for item in layers:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*modules)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(((x + 1) / 2 - self.mean) / self.std)


def random_conv_features(seed: int = 0) -> nn.Module:
    """A fixed random conv net (3 -> 32 -> 64 -> 64 channels, to 1/4 size), the same for every seed user."""
    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU())
    for layer in net:
        if isinstance(layer, nn.Conv2d):
            fan_in = layer.weight[0].numel()
            layer.weight.data = torch.randn(layer.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
            layer.bias.data.zero_()
    return net


def feature_extractor(name: str, weights: str = "") -> nn.Module | None:
    """The frozen perceptual feature net of option `perceptual` (see the module docstring); None for "none"."""
    if name == "none":
        return None
    if name == "pixel":
        net: nn.Module = nn.Identity()
    elif name == "random-conv":
        net = random_conv_features()
    elif name in VGG_LAYERS:
        if not weights or not os.path.isfile(weights):
            raise ValueError(f"perceptual {name!r} needs perceptual_weights: a local torchvision {name} state dict "
                             f"(got {weights!r})")
        net = VGGFeatures(VGG_LAYERS[name])
        if weights.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(weights)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        wanted = net.state_dict()
        net.load_state_dict({k: v for k, v in state.items() if k in wanted})
    else:
        raise ValueError(f"unknown perceptual {name!r}; use random-conv, vgg16, vgg19, pixel or none")
    return net.eval().requires_grad_(False)


class PatchDiscriminator(nn.Module):
    """A small PatchGAN (70x70-style, 3 strided convs): image -> a map of real/fake scores."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, dim, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(dim, dim * 2, 4, 2, 1), nn.InstanceNorm2d(dim * 2), nn.LeakyReLU(0.2),
            nn.Conv2d(dim * 2, dim * 4, 4, 1, 1), nn.InstanceNorm2d(dim * 4), nn.LeakyReLU(0.2),
            nn.Conv2d(dim * 4, 1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BeautyRECTrainee(nn.Module):
    """What is trained when the adversarial loss is on: the net and its discriminator (exported: the net)."""

    def __init__(self, net: BeautyRECNet, discriminator: PatchDiscriminator):
        super().__init__()
        self.net, self.discriminator = net, discriminator


def net_of(model: nn.Module) -> BeautyRECNet:
    model = getattr(model, "module", model)
    return getattr(model, "net", model)


# -- synthetic makeup and colour jitter (numpy, one sample) -------------------------------------------

def _soft(mask: np.ndarray, size: int) -> np.ndarray:
    from facefab.face.colour import feathered

    return feathered(mask, max(1.0, size / 64))[..., None]


def synthetic_makeup(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(S,S,3) uint8 `image` wearing random makeup: lips moved to a random colour (Lab, chroma LIP_CHROMA),
    an eye shadow of random colour and opacity in the eye band, a small foundation shift on the skin."""
    from facefab.face.colour import from_lab, to_lab

    masks = component_masks(torch.from_numpy(labels[None]))[0].numpy() > 0.5
    lab, size = to_lab(image), image.shape[0]
    out = lab.copy()
    lips, skin, eyes = (masks[COMPONENTS.index(c)] for c in ("lips", "skin", "eyes"))
    if skin.any():
        shift = rng.uniform(-FOUNDATION_SHIFT, FOUNDATION_SHIFT, 3)
        out = out + _soft(skin, size) * shift
    if lips.any():
        hue, chroma = rng.uniform(-0.6, 1.2), rng.uniform(*LIP_CHROMA)  # reds to pinks to purples
        target = np.array([np.median(lab[lips][:, 0]) + rng.uniform(-15, 5), chroma * np.cos(hue),
                           chroma * np.sin(hue)])
        shifted = lab.copy()
        shifted[..., 1:] = lab[..., 1:] - np.median(lab[lips][:, 1:], axis=0) + target[1:]
        shifted[..., 0] = lab[..., 0] - np.median(lab[lips][:, 0]) + target[0]
        out = out * (1 - _soft(lips, size)) + shifted * _soft(lips, size)
    if eyes.any():
        colour = np.array([rng.uniform(20, 60), rng.uniform(-20, 40), rng.uniform(-40, 30)])
        opacity = rng.uniform(*EYE_OPACITY)
        out = out * (1 - opacity * _soft(eyes, size)) + colour * opacity * _soft(eyes, size)
    out[..., 0] = np.clip(out[..., 0], 0, 100)
    return from_lab(out.astype(np.float32))


def colour_jittered(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Per-channel random gain and offset (a different camera / light)."""
    gain = 1 + rng.uniform(-strength, strength, 3)
    offset = rng.uniform(-strength, strength, 3) * 255
    return np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


# -- clips ---------------------------------------------------------------------------------------------

def manifest_root(row: dict[str, Any]) -> str | None:
    """The preprocess root of a row, from its artifacts' layout ROOT/artifacts/<kind>/xx/<id>.*; None when
    its URIs are laid out otherwise."""
    uri = row.get("masks_uri") or row.get("crop_uri") or ""
    parts = uri.rstrip("/").split("/")
    if len(parts) >= 5 and parts[-4] == "artifacts":
        return "/".join(parts[:-4])
    return None


@functools.lru_cache(maxsize=4)
def _rows_of(root: str, storage_key: str) -> tuple[dict[str, Any], ...]:
    import json

    from facefab.manifests.io import read_manifest
    from facefab.manifests.schemas import STATUS_OK

    table = read_manifest(root, json.loads(storage_key) or None)
    return tuple({k: r.get(k) for k in ("id", "fps", "crop_uri", "masks_uri")} for r in table.to_pylist()
                 if r.get("status") == STATUS_OK and r.get("crop_uri") and r.get("masks_uri"))


def other_rows(row: dict[str, Any], storage_options: dict | None) -> list[dict[str, Any]]:
    """The manifest's other clips with crops and parsing masks (read once per process and root)."""
    import json

    root = manifest_root(row)
    if root is None:
        return []
    try:
        rows = _rows_of(root, json.dumps(storage_options or {}, sort_keys=True, default=str))
    except Exception as exc:  # noqa: BLE001 -- no manifest there: references from the row itself
        log.warning("beautyrec: no manifest at %s (%s); references come from the clip itself", root, exc)
        return []
    return [r for r in rows if r["id"] != row["id"]]


@SYSTEMS.register("beautyrec")
class BeautyRECSystem(TrainingSystemBase):
    """TrainingSystem for BeautyREC. Picklable: shipped to Ray Data tasks and train workers."""

    name = "beautyrec"
    presets = {"paper": {}, "tiny": TINY_CONFIG}

    def __init__(self) -> None:
        self.model_config: dict[str, Any] = self.default_config()
        self.options: dict[str, Any] = deep_merge(DEFAULT_OPTIONS, {})
        self._features: nn.Module | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_features": None}  # rebuilt where used

    # -- protocol ---------------------------------------------------------------------------------

    def default_config(self) -> dict[str, Any]:
        """Paper-size model kwargs (256 px, 48 channels, 3 residual blocks, 8 heads)."""
        return _init_defaults()

    def configure(self, model_config: dict[str, Any] | None = None, stage: str = "",
                  options: dict[str, Any] | None = None) -> None:
        if model_config is not None:
            self.model_config = dict(model_config)
        if stage:
            raise ValueError(f"beautyrec has no stages (got {stage!r})")
        unknown = set(options or {}) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown beautyrec option(s) {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
        self.options = deep_merge(DEFAULT_OPTIONS, options or {})
        feature_extractor(self.options["perceptual"], self.options["perceptual_weights"])  # fail early

    def build_model(self, model_config: dict[str, Any]) -> nn.Module:
        net = BeautyRECNet(**model_config)
        if self.options["weights"].get("adversarial", 0) > 0:
            return BeautyRECTrainee(net, PatchDiscriminator(max(16, 2 * int(model_config.get("dim", 48)))))
        return net

    def make_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        """Random (source, reference) pairs, drawn afresh on every pass over the data
        unless the `seed` option is set (then the same pairs every pass)."""
        rng = sample_rng(row, self.options["seed"])
        return self._pairs(row, storage_options, rng, int(self.options["samples_per_clip"]), evaluation=False)

    def make_eval_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        """Deterministic pairs: evenly spaced source frames, references from a seeded draw."""
        return self._pairs(row, storage_options, np.random.default_rng(0), int(self.options["eval_pairs"]),
                           evaluation=True)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        w, net = self.options["weights"], net_of(model)
        param = next(net.parameters())
        source, reference = to_unit(batch["source"], dtype=param.dtype), to_unit(batch["reference"], dtype=param.dtype)
        source_masks = component_masks(batch["source_labels"])
        reference_masks = component_masks(batch["reference_labels"])
        output = net.transfer(source, reference, source_masks.to(param.dtype), reference_masks.to(param.dtype))
        terms = self.makeup_terms(output, source, reference, source_masks, reference_masks)

        features = self._feature_net(param.device)
        zero = output.new_zeros(())
        if features is not None and (w["perceptual"] or w["unchanged"]):
            terms["perceptual"] = F.l1_loss(features(output.float()), features(source.float()))
            unchanged = torch.zeros_like(batch["source_labels"], dtype=torch.bool)
            for name in UNCHANGED:
                unchanged |= batch["source_labels"] == LABELS[name]
            keep = unchanged[:, None].to(output.dtype)
            terms["unchanged"] = F.l1_loss(features((output * keep).float()), features((source * keep).float()))
        else:
            terms["perceptual"] = terms["unchanged"] = zero
        terms["content"] = (F.l1_loss(net.content_encoder(output)[0], net.content_encoder(source)[0].detach())
                            if w["content"] else zero)
        if w.get("adversarial", 0) > 0:
            terms.update(self.adversarial_terms(model, output, reference))
        total = sum(w.get(k, 1.0) * v for k, v in terms.items())
        logs = {k: float(v.detach()) for k, v in terms.items()}
        return total, logs

    def makeup_terms(self, output: torch.Tensor, source: torch.Tensor, reference: torch.Tensor,
                     source_masks: torch.Tensor, reference_masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per component: mean L1 inside the source's mask between the output and the source
        histogram-matched to the reference (0 where a mask is too small)."""
        terms = {}
        for i, name in enumerate(COMPONENTS):
            target, valid = histogram_matched(source.float(), reference.float(), source_masks[:, i],
                                              reference_masks[:, i], int(self.options["min_region_px"]))
            mask = source_masks[:, i:i + 1].to(output.dtype) * valid[:, None, None, None].to(output.dtype)
            area = (mask.sum() * output.shape[1]).clamp_min(1.0)
            terms[name] = ((output - target.to(output.dtype)).abs() * mask).sum() / area
        return terms

    @staticmethod
    def adversarial_terms(model: nn.Module, output: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """LSGAN: the discriminator's loss (on the detached output) + the generator's (the discriminator read
        through detached parameters), summed as one term: each gradient reaches only its own side."""
        from torch.func import functional_call

        disc = getattr(model, "module", model).discriminator
        d_loss = 0.5 * ((disc(reference) - 1) ** 2).mean() + 0.5 * (disc(output.detach()) ** 2).mean()
        frozen = {k: v.detach() for k, v in disc.named_parameters()}
        g_loss = ((functional_call(disc, frozen, (output,)) - 1) ** 2).mean()
        return {"adversarial": d_loss + g_loss}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: list[dict[str, np.ndarray]], batch_size: int = 8) -> dict[str, float]:
        """Lip colour distance to the reference (Lab, mean colour over the lips) of the output and of the
        source, over held-out pairs."""
        if not samples:
            return {}
        from facefab.face.colour import to_lab
        from facefab.models.shared.latents import to_uint8

        net = net_of(model)
        was_training = net.training
        net.eval()
        param = next(net.parameters())
        ours, theirs = [], []
        try:
            for i in range(0, len(samples), batch_size):
                chunk = {k: torch.from_numpy(np.stack([s[k] for s in samples[i:i + batch_size]])).to(param.device)
                         for k in samples[0]}
                made_up = to_uint8(net(to_unit(chunk["source"], dtype=param.dtype),
                                       to_unit(chunk["reference"], dtype=param.dtype),
                                       chunk["source_labels"], chunk["reference_labels"]))
                for j in range(len(made_up)):
                    src = {k: v[j].cpu().numpy() for k, v in chunk.items()}
                    d_out = lip_colour_distance(to_lab(made_up[j]), src["source_labels"], to_lab(src["reference"]),
                                                src["reference_labels"])
                    d_src = lip_colour_distance(to_lab(src["source"]), src["source_labels"], to_lab(src["reference"]),
                                                src["reference_labels"])
                    if d_out is not None:
                        ours.append(d_out)
                        theirs.append(d_src)
        finally:
            net.train(was_training)
        if not ours:
            return {}
        return {"lip_lab_distance": float(np.mean(ours)), "source_lip_lab_distance": float(np.mean(theirs))}

    def export(self, model: nn.Module, out_dir: str) -> None:
        """config.json + diffusion_pytorch_model.safetensors and model_index.json: a BeautyRECPipeline folder."""
        save_pipeline(net_of(model), out_dir)

    # -- helpers ----------------------------------------------------------------------------------

    def _feature_net(self, device: torch.device) -> nn.Module | None:
        if self._features is None:
            self._features = feature_extractor(self.options["perceptual"], self.options["perceptual_weights"])
        if self._features is not None:
            self._features = self._features.to(device)
        return self._features

    def _clip(self, row: dict[str, Any], storage_options: dict | None) -> tuple[np.ndarray, np.ndarray]:
        """(frames (T,S,S,3) uint8, labels (T,S,S) uint8) of a row's valid parsed frames at the model size."""
        import cv2

        from facefab.media.arrays import load_npz
        from facefab.media.io import read_frames

        size = int(self.model_config.get("image_size", 256))
        if not row.get("crop_uri") or not row.get("masks_uri"):
            raise ValueError(f"row {row.get('id')!r} needs crop_uri and masks_uri (preprocess with align and parsing)")
        fps, max_frames = float(row.get("fps") or 25.0), int(self.options["max_frames"])
        frames = read_frames(row["crop_uri"], end=max_frames / fps if max_frames else None, size=(size, size),
                             storage_options=storage_options)
        masks = load_npz(row["masks_uri"], storage_options)
        n = min(len(frames), len(masks["labels"]))
        valid = masks["valid"][:n] if "valid" in masks else np.ones(n, bool)
        labels = np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
                           for m in masks["labels"][:n]]) if n else np.zeros((0, size, size), np.uint8)
        keep = np.flatnonzero(valid)
        return frames[:n][keep], labels[keep]

    def _pairs(self, row: dict[str, Any], storage_options: dict | None, rng: np.random.Generator, count: int,
               evaluation: bool) -> list[dict[str, np.ndarray]]:
        frames, labels = self._clip(row, storage_options)
        n = len(frames)
        if n == 0 or count <= 0:
            return []
        others = other_rows(row, storage_options)
        if others:
            picked = rng.choice(len(others), min(len(others), int(self.options["reference_clips"])), replace=False)
            pool = [self._clip(others[int(i)], storage_options) for i in picked]
            pool = [p for p in pool if len(p[0])]
        else:
            pool = []
        sources = (np.linspace(0, n - 1, count).round().astype(int) if evaluation else rng.integers(0, n, count))
        samples = []
        for s in sources:
            if pool:
                ref_frames, ref_labels = pool[int(rng.integers(len(pool)))]
                r = int(rng.integers(len(ref_frames)))
                reference, reference_labels = ref_frames[r], ref_labels[r]
            else:  # one clip: a distant frame of it, as another camera would show it
                r = (int(s) + n // 2 + int(rng.integers(-n // 6, n // 6 + 1))) % n
                reference = colour_jittered(frames[r], float(self.options["jitter"]), rng)
                reference_labels = labels[r]
            if rng.random() < float(self.options["synthetic_makeup"]):
                reference = synthetic_makeup(reference, reference_labels, rng)
            samples.append({"source": frames[s], "source_labels": labels[s], "reference": reference,
                            "reference_labels": reference_labels})
        return samples


def lip_colour_distance(lab: np.ndarray, labels: np.ndarray, reference_lab: np.ndarray,
                        reference_labels: np.ndarray) -> float | None:
    """Lab distance between the mean lip colours of two faces; None when either shows no lips."""
    lips = (labels == LABELS["upper_lip"]) | (labels == LABELS["lower_lip"])
    theirs = (reference_labels == LABELS["upper_lip"]) | (reference_labels == LABELS["lower_lip"])
    if lips.sum() < 4 or theirs.sum() < 4:
        return None
    return float(np.linalg.norm(lab[lips].mean(0) - reference_lab[theirs].mean(0)))


def _init_defaults() -> dict[str, Any]:
    import inspect

    sig = inspect.signature(BeautyRECNet.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self" and p.default is not inspect.Parameter.empty}


__all__ = ["BeautyRECSystem", "BeautyRECTrainee", "PatchDiscriminator", "feature_extractor", "histogram_matched",
           "lip_colour_distance", "manifest_root", "synthetic_makeup"]

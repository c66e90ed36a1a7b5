"""MyTalk inference: the two-stage pipeline and the `MyTalkDub` generator operator.

Checkpoint folder (local or s3://...), as written by `facefab train mytalk` (training.export):

    model_index.json            {"_class_name": "MyTalkPipeline", "motion": [...], "renderer": [...]}
    motion/config.json          MyTalkMotion config
    motion/diffusion_pytorch_model.safetensors
    renderer/config.json        MyTalkRenderer config
    renderer/diffusion_pytorch_model.safetensors

`MyTalkPipeline(crops, ref_landmarks, mel_windows)`: the reference video's aligned face crops, their
478-point landmarks in crop pixels and the NEW audio's per-frame mel windows -> the crops with the
lip region re-drawn to speak the new audio. Stage 1 runs over overlapping temporal windows blended
with `generation.blend_windows`; stage 2 renders each frame's lip box and composites it back, so
everything outside the blend region (`alpha` = 0) is the input crop, bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from facefab.face.smoothing import fill_missing

from ..shared.speech import audio_mel_windows
from ..shared.windows import blend_windows, window_spans
from ..weights import CheckpointError, load_model, resolve_checkpoint
from .motion import MOTION_POINTS, MyTalkMotion, normalised_68, pick_frames
from .renderer import MyTalkRenderer, frame_inputs, lip_box, to_model_inputs, warp_box

log = logging.getLogger(__name__)

MOTION_FOLDER = "motion"
RENDERER_FOLDER = "renderer"
INDEX_FILE = "model_index.json"
SAMPLE_RATE = 16000


# -- audio features (shared with training) -------------------------------------------------------------

# -- the pipeline ---------------------------------------------------------------------------------------

@dataclass
class MyTalkOutput:
    frames: np.ndarray  # (T, S, S, 3) uint8 generated crops
    alpha: np.ndarray  # (T, S, S) float32 blend weight of the generated pixels (0 = untouched)
    landmarks: np.ndarray  # (T, K, 2) predicted lip/jaw points, normalised crop coordinates


class MyTalkPipeline:
    """Stage 1 (MyTalkMotion) + stage 2 (MyTalkRenderer) for one reference video at a time."""

    def __init__(self, motion: MyTalkMotion, renderer: MyTalkRenderer, *, window: int = 50, overlap: int = 10,
                 batch_size: int = 8):
        window_spans(window + 1, window, overlap)  # validate
        self.motion, self.renderer = motion.eval(), renderer.eval()
        self.window, self.overlap, self.batch_size = window, overlap, batch_size

    @classmethod
    def from_pretrained(cls, folder_or_uri: str, storage_options: dict | None = None, *, device: Any = "auto",
                        dtype: Any = "auto", cache_dir: str | None = None, **kwargs) -> MyTalkPipeline:
        local = resolve_checkpoint(folder_or_uri, storage_options, cache_dir)
        for sub in (MOTION_FOLDER, RENDERER_FOLDER):
            if not os.path.isdir(os.path.join(local, sub)):
                stage = "motion" if sub == MOTION_FOLDER else "render"
                raise CheckpointError(f"MyTalk checkpoint {folder_or_uri} has no {sub}/ folder "
                                      f"(train it with `facefab train mytalk` stage {stage})")
        motion = load_model(MyTalkMotion, local, device=device, dtype=dtype, subfolder=MOTION_FOLDER)
        renderer = load_model(MyTalkRenderer, local, device=device, dtype=dtype, subfolder=RENDERER_FOLDER)
        return cls(motion, renderer, **kwargs)

    def save_pretrained(self, folder: str) -> None:
        save_pipeline_part(self.motion, folder, MOTION_FOLDER)
        save_pipeline_part(self.renderer, folder, RENDERER_FOLDER)

    @property
    def device(self) -> torch.device:
        return next(self.motion.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.motion.parameters()).dtype

    def __call__(self, crops: np.ndarray, ref_landmarks: np.ndarray, mel_windows: np.ndarray) -> np.ndarray:
        return self.generate(crops, ref_landmarks, mel_windows).frames

    @torch.inference_mode()
    def predict_landmarks(self, points68: np.ndarray, valid: np.ndarray, mel_windows: np.ndarray) -> np.ndarray:
        """(T,68,2) normalised reference landmarks + (T,W,80) mel windows -> (T,K,2) target points."""
        refs = points68[pick_frames(valid, self.motion.config.num_ref_frames)]  # (R,68,2)
        template = refs[:, MOTION_POINTS].mean(axis=0)
        ident = torch.from_numpy(refs.reshape(1, len(refs), -1)).to(self.device, self.dtype)
        n = len(mel_windows)
        spans = window_spans(n, self.window, self.overlap)
        outputs = []
        for start, end in spans:
            mel = torch.from_numpy(np.ascontiguousarray(mel_windows[start:end], np.float32))[None]
            outputs.append(self.motion(mel.to(self.device, self.dtype), ident)[0].float().cpu().numpy())
        return template[None] + blend_windows(n, spans, outputs)

    @torch.inference_mode()
    def generate(self, crops: np.ndarray, ref_landmarks: np.ndarray, mel_windows: np.ndarray) -> MyTalkOutput:
        """All frames at once: (T,S,S,3) uint8 crops in, MyTalkOutput with every frame out."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1] != crops.shape[2] or crops.shape[3] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"crops must be (T,S,S,3) uint8, got {crops.dtype} {crops.shape}")
        n, size = len(crops), crops.shape[1]
        frames, alphas = crops.copy(), np.zeros((n, size, size), np.float32)
        stream = self.generate_stream(crops.__getitem__, size, ref_landmarks, mel_windows)
        for t, (frame, alpha) in enumerate(stream):
            frames[t], alphas[t] = frame, alpha
        return MyTalkOutput(frames, alphas, stream.target)

    def generate_stream(self, crop_at: Callable[[int], np.ndarray], size: int, ref_landmarks: np.ndarray,
                        mel_windows: np.ndarray) -> "FrameStream":
        """The frames one batch at a time, for outputs too long to hold: `crop_at(t)` gives the
        (S,S,3) uint8 crop of output frame t (asked for in order, plus the few reference frames
        up front); iterating yields (frame, alpha) per output frame. `.target` holds the predicted
        mouth points for all frames as soon as the stream is made."""
        n = len(ref_landmarks)
        if len(mel_windows) != n:
            raise ValueError(f"{n} landmark frames but {len(mel_windows)} mel windows")
        points68, valid = fill_missing(normalised_68(ref_landmarks, size))
        target = self.predict_landmarks(points68, valid, np.asarray(mel_windows, np.float32))
        return FrameStream(self._render_frames(crop_at, n, points68, valid, target), target)

    @torch.inference_mode()
    def _render_frames(self, crop_at, n, points68, valid, target) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        own = points68[:, MOTION_POINTS]
        cfg = self.renderer.config
        box = lip_box(own[valid], cfg.box_scale)
        openness = np.ptp(own[:, 29:37, 1], axis=1)  # inner-lip height: references from closed to open
        ref_idx = np.flatnonzero(valid)[np.argsort(openness[valid])]
        ref_idx = ref_idx[np.round(np.linspace(0, len(ref_idx) - 1, cfg.num_refs)).astype(int)]
        ref_boxes = np.stack([warp_box(crop_at(int(t)), box, cfg.image_size) for t in ref_idx])
        for start in range(0, n, self.batch_size):
            crops = [crop_at(t) for t in range(start, min(n, start + self.batch_size))]
            boxes = [warp_box(c, box, cfg.image_size) for c in crops]
            items = [frame_inputs(b, box.to_box(target[t]), [box.to_box(own[t]), box.to_box(target[t])],
                                  ref_boxes, cfg.mask_dilation, cfg.feather) for t, b in enumerate(boxes, start)]
            batch = to_model_inputs({k: np.stack([it[k] for it in items]) for k in items[0]}, self.device, self.dtype)
            rgb, alpha = self.renderer(batch["masked"], batch["sketch"], batch["mask"], batch["refs"])
            rgb = ((rgb.float().clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).cpu().numpy()
            alpha = alpha.float()[:, 0].cpu().numpy()
            for j, crop in enumerate(crops):
                yield paste_box(crop, rgb[j], alpha[j], box)


@dataclass
class FrameStream:
    """Generated (frame, alpha) pairs in output order, and the predicted mouth points (T,K,2)."""

    frames: Iterator[tuple[np.ndarray, np.ndarray]]
    target: np.ndarray

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.frames


def paste_box(crop: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    """Composite a rendered box (rgb 0..255 float, alpha) into its crop; alpha 0 keeps the crop's pixels."""
    size = crop.shape[0]
    affine = box.affine(size, rgb.shape[0])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    rgb_c = cv2.warpAffine(rgb.astype(np.float32), affine, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    alpha_c = cv2.warpAffine(alpha.astype(np.float32), affine, (size, size), flags=flags,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = crop.astype(np.float32) * (1 - alpha_c[..., None]) + rgb_c * alpha_c[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), alpha_c


def save_pipeline_part(model, folder: str, part: str) -> None:
    """save_pretrained(`folder`/`part`, safetensors) into a local folder and record the part in its
    model_index.json. Putting a folder on shared storage (and merging it with the parts already
    there) is the training layer's one export merge (`facefab.training.export.merge_into`)."""
    model = getattr(model, "module", model)  # DDP / DeepSpeed wrappers
    model.save_pretrained(os.path.join(folder, part), safe_serialization=True)
    _update_index(folder, part, model)


def _update_index(root: str, part: str, model) -> None:
    path = os.path.join(root, INDEX_FILE)
    index = {"_class_name": "MyTalkPipeline"}
    if os.path.exists(path):
        with open(path) as f:
            index.update(json.load(f))
    index[part] = ["facefab.models.mytalk", type(model).__name__]
    with open(path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)

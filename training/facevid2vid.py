"""face-vid2vid as a `facefab train` system (the TrainingSystem contract of facefab.training.systems).

Samples are (source, driving) frame pairs of one clip's aligned crop video (`crop_uri`), resized to
the model's `image_size`. When the row has a per-frame table (`frames_uri`, with the preprocess
`pose` column) the driving frame's yaw/pitch/roll come along and supervise the head-pose
estimator, as the paper does with a pretrained HopeNet; without one that loss is off.

Losses (paper, simplified): multi-scale L1 reconstruction (stands in for the VGG perceptual loss;
no GAN), keypoint equivariance under a random affine warp, the keypoint prior (keypoints spread
apart, mean depth near z_t), head-pose L1, and the L1 prior on expression deformations.
Evaluation: self-reenactment PSNR (source = the first frame of a held-out clip, driving = later
frames of the same clip, target = the driving frame itself).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from facefab.models.facevid2vid.model import TINY_CONFIG, FaceVid2VidModel, transform_keypoints
from facefab.models.facevid2vid.pipeline import save_pipeline

from .dicts import deep_merge
from .systems import SYSTEMS, TrainingSystemBase, sample_rng

DEFAULT_OPTIONS: dict[str, Any] = {
    "pairs_per_clip": 32,      # training samples drawn from one clip per pass over the data
    "seed": None,              # None: fresh samples every pass; an int: the same samples every pass (reproducible)
    "eval_pairs": 8,           # driving frames per held-out clip for evaluate()
    "max_frames": 250,         # frames decoded per clip (10 s at 25 fps)
    "weights": {"reconstruction": 10.0, "equivariance": 1.0, "keypoint_prior": 1.0,
                "pose": 1.0, "deformation": 1.0},
    "keypoint_distance": 0.1,  # D_t of the keypoint prior
    "keypoint_depth": 0.33,    # z_t of the keypoint prior
    "equivariance_rotation": 15.0,  # degrees, random affine for the equivariance loss
    "equivariance_scale": 0.1,
    "equivariance_shift": 0.1,
}

# Stages are config: option overrides applied on top of DEFAULT_OPTIONS.
STAGES: dict[str, dict[str, Any]] = {
    # the paper's joint training of all five networks
    "full": {},
    # after `full`: fine-tune only the appearance extractor, motion field estimator and generator
    # (e.g. at a higher resolution with --init-from the full stage's export); keypoints and pose frozen
    "generator": {"freeze": ["keypoints", "pose"],
                  "weights": {"equivariance": 0.0, "keypoint_prior": 0.0, "pose": 0.0, "deformation": 0.0}},
}


def _to_images(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1]."""
    return x.permute(0, 3, 1, 2).contiguous().to(dtype) / 255.0


def _random_affine(batch: int, opts: dict[str, Any], device, dtype, generator=None) -> torch.Tensor:
    """(B, 2, 3) affine maps on normalised coordinates, near the identity."""
    def u(lo, hi):
        return torch.rand(batch, generator=generator, device="cpu", dtype=torch.float64).mul(hi - lo).add(lo)

    angle = torch.deg2rad(u(-opts["equivariance_rotation"], opts["equivariance_rotation"]))
    scale = 1 + u(-opts["equivariance_scale"], opts["equivariance_scale"])
    tx = u(-opts["equivariance_shift"], opts["equivariance_shift"])
    ty = u(-opts["equivariance_shift"], opts["equivariance_shift"])
    cos, sin = angle.cos() * scale, angle.sin() * scale
    theta = torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], 1)
    return theta.to(device=device, dtype=dtype)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [0, 1]."""
    mse = ((prediction.clamp(0, 1).double() - target.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@SYSTEMS.register("facevid2vid")
class FaceVid2VidSystem(TrainingSystemBase):
    """TrainingSystem for face-vid2vid. Picklable: shipped to Ray Data tasks and train workers."""

    name = "facevid2vid"
    presets = {"paper": {}, "tiny": TINY_CONFIG}
    stages = STAGES

    def __init__(self) -> None:
        self.model_config: dict[str, Any] = self.default_config()
        self.stage = "full"
        self.options: dict[str, Any] = deep_merge(DEFAULT_OPTIONS, {})

    # -- protocol ---------------------------------------------------------------------------------

    def default_config(self) -> dict[str, Any]:
        """Paper-size model kwargs (256 px, K = 20, 32 x 16 feature volume)."""
        return _init_defaults()

    def configure(self, model_config: dict[str, Any] | None = None, stage: str = "",
                  options: dict[str, Any] | None = None) -> None:
        """Called by the runtime before anything else: model kwargs, stage name, option overrides."""
        if model_config is not None:
            self.model_config = dict(model_config)
        stage = stage or "full"
        if stage not in self.stages:
            raise ValueError(f"facevid2vid has no stage {stage!r}; stages: {sorted(self.stages)}")
        self.stage = stage
        unknown = set(options or {}) - set(DEFAULT_OPTIONS) - {"freeze"}
        if unknown:
            raise ValueError(f"unknown facevid2vid option(s) {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
        self.options = deep_merge(deep_merge(DEFAULT_OPTIONS, self.stages[stage]), options or {})

    def build_model(self, model_config: dict[str, Any]) -> FaceVid2VidModel:
        model = FaceVid2VidModel(**model_config)
        for name in self.options.get("freeze", []):
            getattr(model, name).requires_grad_(False)
        return model

    def make_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        """Random (source, driving) pairs of one clip, drawn afresh on every pass over the data
        unless the `seed` option is set (then the same pairs every pass)."""
        frames, poses = self._load_clip(row, storage_options)
        n = len(frames)
        if n < 2:
            return []
        rng = sample_rng(row, self.options["seed"])
        count = int(self.options["pairs_per_clip"])
        src = rng.integers(0, n, count)
        drv = (src + rng.integers(1, n, count)) % n  # never the same frame
        return [self._sample(frames, poses, int(s), int(d)) for s, d in zip(src, drv)]

    def make_eval_samples(self, row: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, np.ndarray]]:
        """Deterministic self-reenactment pairs: frame 0 drives to evenly spaced later frames."""
        frames, poses = self._load_clip(row, storage_options)
        n = len(frames)
        if n < 2:
            return []
        count = min(int(self.options["eval_pairs"]), n - 1)
        targets = np.linspace(1, n - 1, count).round().astype(int)
        return [self._sample(frames, poses, 0, int(d)) for d in targets]

    def loss(self, model: FaceVid2VidModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        opts, w = self.options, self.options["weights"]
        dtype = next(model.parameters()).dtype
        source, driving = _to_images(batch["source"], dtype), _to_images(batch["driving"], dtype)
        out = model(source, driving)
        pred = out["prediction"]

        recon = sum(F.l1_loss(F.avg_pool2d(pred, s) if s > 1 else pred, F.avg_pool2d(driving, s) if s > 1 else driving)
                    for s in (1, 2, 4))
        terms = {"reconstruction": recon}
        zero = pred.new_zeros(())

        # equivariance: keypoints of a warped driving frame, mapped back, match the frame's own
        if w["equivariance"]:
            theta = _random_affine(driving.shape[0], opts, driving.device, dtype)
            grid = F.affine_grid(theta, list(driving.shape), align_corners=True)
            warped = F.grid_sample(driving, grid, padding_mode="reflection", align_corners=True)
            kp_d = transform_keypoints(model.keypoints(driving), out["pose_driving"])
            kp_w = transform_keypoints(model.keypoints(warped), model.pose(warped))
            mapped = torch.einsum("bij,bkj->bki", theta[:, :, :2], kp_w[..., :2]) + theta[:, None, :, 2]
            terms["equivariance"] = F.l1_loss(mapped, kp_d[..., :2])
        else:
            terms["equivariance"] = zero

        # keypoint prior on the driving keypoints: spread out, mean depth near z_t
        kp = out["kp_driving"]
        if w["keypoint_prior"]:
            dist = ((kp[:, :, None] - kp[:, None]) ** 2).sum(-1)
            k = kp.shape[1]
            off = ~torch.eye(k, dtype=torch.bool, device=kp.device)
            spread = F.relu(opts["keypoint_distance"] - dist)[:, off].sum(-1).mean() / max(k * (k - 1), 1)
            terms["keypoint_prior"] = spread + (kp[..., 2].mean(-1) - opts["keypoint_depth"]).abs().mean()
        else:
            terms["keypoint_prior"] = zero

        # head pose against the preprocess estimate (degrees / 90), only where it exists
        valid = batch["pose_valid"].to(dtype)
        if w["pose"] and bool(valid.sum() > 0):
            pose = out["pose_driving"]
            pred_angles = torch.stack([pose["yaw"], pose["pitch"], pose["roll"]], -1)
            err = (pred_angles - batch["driving_pose"].to(dtype)).abs().mean(-1) / 90.0
            terms["pose"] = (err * valid).sum() / valid.sum()
        else:
            terms["pose"] = zero

        terms["deformation"] = out["pose_driving"]["expression"].abs().mean() if w["deformation"] else zero
        total = sum(w[k] * v for k, v in terms.items())
        logs = {k: float(v.detach()) for k, v in terms.items()}
        with torch.no_grad():
            logs["psnr"] = float(psnr(pred.float(), driving.float()).mean())
        return total, logs

    @torch.no_grad()
    def evaluate(self, model: FaceVid2VidModel, samples: list[dict[str, np.ndarray]], batch_size: int = 8) -> dict[str, float]:
        """Self-reenactment PSNR (dB) and L1 over the samples (held-out clip pairs)."""
        if not samples:
            return {}
        was_training = model.training
        model.eval()
        param = next(model.parameters())
        values, l1 = [], []
        try:
            for i in range(0, len(samples), batch_size):
                chunk = samples[i:i + batch_size]
                src = _to_images(torch.from_numpy(np.stack([s["source"] for s in chunk])).to(param.device), param.dtype)
                drv = _to_images(torch.from_numpy(np.stack([s["driving"] for s in chunk])).to(param.device), param.dtype)
                pred = model(src, drv)["prediction"].float()
                values.append(psnr(pred, drv.float()))
                l1.append((pred - drv.float()).abs().flatten(1).mean(1))
        finally:
            model.train(was_training)
        return {"psnr": float(torch.cat(values).mean()), "l1": float(torch.cat(l1).mean())}

    def export(self, model: FaceVid2VidModel, out_dir: str) -> None:
        """config.json + diffusion_pytorch_model.safetensors (FaceVid2VidModel.from_pretrained(out_dir)) and
        model_index.json: a FaceVid2VidPipeline folder."""
        save_pipeline(model, out_dir)

    # -- helpers ----------------------------------------------------------------------------------

    def _load_clip(self, row: dict[str, Any], storage_options: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
        from facefab.media.io import read_frames

        size = int(self.model_config.get("image_size", 256))
        uri = row.get("crop_uri")
        if not uri:
            raise ValueError(f"row {row.get('id')!r} has no crop_uri (run preprocess with the align operator)")
        max_frames = int(self.options["max_frames"])
        fps = float(row.get("fps") or 25.0)
        frames = read_frames(uri, end=max_frames / fps if max_frames else None, size=(size, size),
                             storage_options=storage_options)
        return frames, self._load_poses(row, len(frames), storage_options)

    @staticmethod
    def _load_poses(row: dict[str, Any], count: int, storage_options: dict | None) -> np.ndarray | None:
        uri = row.get("frames_uri")
        if not uri:
            return None
        from facefab.operators.track_row import read_frame_table

        table = read_frame_table(uri, storage_options)
        poses = np.full((count, 3), np.nan, np.float32)
        n = min(count, len(table))
        poses[:n] = table.pose[:n, :3]
        return poses

    @staticmethod
    def _sample(frames: np.ndarray, poses: np.ndarray | None, s: int, d: int) -> dict[str, np.ndarray]:
        pose = poses[d] if poses is not None else np.full(3, np.nan, np.float32)
        valid = np.float32(np.isfinite(pose).all())
        return {"source": frames[s], "driving": frames[d],
                "driving_pose": np.nan_to_num(pose).astype(np.float32), "pose_valid": np.array(valid, np.float32)}


def _init_defaults() -> dict[str, Any]:
    import inspect

    sig = inspect.signature(FaceVid2VidModel.__init__)
    return {k: (list(p.default) if isinstance(p.default, tuple) else p.default)
            for k, p in sig.parameters.items() if k != "self" and p.default is not inspect.Parameter.empty}


"""Optical flow of a track's aligned crop: dense flow between consecutive frames + keypoint tracks.

Backends:
- "dis" (default): OpenCV DIS optical flow, preset MEDIUM, on grayscale crops at `flow_size`.
- "raft": torchvision's RAFT-large with a local state-dict file (Config.raft_weights). torchvision
  is not a facefab dependency (it is not installed in the base image), so this backend only runs
  where both torchvision and the weights file are present; otherwise every row fails with a
  clear error instead of silently falling back to DIS.

Sparse trajectories: up to K good-features-to-track corners on frame 0 (topped up with a regular
grid when the crop has fewer corners), moved frame to frame by the dense flow sampled bilinearly
at each point, so they agree with the stored flow.

All coordinates and flow vectors are in pixels of the `flow_size` x `flow_size` crop.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import cv2
import numpy as np

from facefab.media.arrays import load_npz

BACKENDS = ("dis", "raft")
RAFT_UNAVAILABLE = "RAFT flow needs torchvision and a weights path (Config.raft_weights)"


def dis_flow(gray: np.ndarray) -> np.ndarray:
    """(T-1, h, w, 2) float32 flow from frame t to t+1 of (T, h, w) uint8 grayscale frames."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    h, w = gray.shape[1:]
    flows = [dis.calc(gray[t], gray[t + 1], None) for t in range(len(gray) - 1)]
    return np.stack(flows) if flows else np.zeros((0, h, w, 2), np.float32)


def raft_available(weights: str | None) -> bool:
    return importlib.util.find_spec("torchvision") is not None and bool(weights) and os.path.isfile(weights)


def load_raft(weights: str, device: str):
    import torch
    from torchvision.models.optical_flow import raft_large

    model = raft_large(weights=None, progress=False)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    return model.to(device).eval()


def raft_flow(model, frames: np.ndarray, device: str, batch: int = 8) -> np.ndarray:
    """(T-1, h, w, 2) flow from RAFT; h and w must be multiples of 8."""
    import torch

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    out = []
    with torch.inference_mode():
        for i in range(0, len(x) - 1, batch):
            a, b = x[i:i + batch], x[i + 1:i + 1 + batch]
            a = a[:len(b)]
            out.append(model(a.to(device), b.to(device))[-1].permute(0, 2, 3, 1).cpu().numpy())
    h, w = frames.shape[1:3]
    return np.concatenate(out) if out else np.zeros((0, h, w, 2), np.float32)


def initial_keypoints(gray: np.ndarray, count: int, quality: float, min_distance: float) -> np.ndarray:
    """(count, 2) float32 xy: strongest corners of `gray`, topped up with grid points."""
    corners = cv2.goodFeaturesToTrack(gray, maxCorners=count, qualityLevel=quality, minDistance=min_distance)
    points = np.zeros((0, 2), np.float32) if corners is None else corners[:, 0].astype(np.float32)
    missing = count - len(points)
    if missing > 0:
        side = int(np.ceil(np.sqrt(missing)))
        h, w = gray.shape
        gx, gy = np.meshgrid((np.arange(side) + 0.5) * w / side, (np.arange(side) + 0.5) * h / side)
        grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)[:missing]
        points = np.concatenate([points, grid])
    return points


def chain_trajectories(flow: np.ndarray, start: np.ndarray) -> np.ndarray:
    """(K, T, 2) positions of `start` points carried through the (T-1, h, w, 2) flow."""
    h, w = flow.shape[1:3]
    track = np.empty((len(start), len(flow) + 1, 2), np.float32)
    track[:, 0] = start
    for t, field in enumerate(flow):
        p = track[:, t]
        step = cv2.remap(field, p[:, 0:1], p[:, 1:2], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[:, 0]
        moved = p + step
        np.clip(moved[:, 0], 0, w - 1, out=moved[:, 0])
        np.clip(moved[:, 1], 0, h - 1, out=moved[:, 1])
        track[:, t + 1] = moved
    return track


# Quantisation step bounds (px at flow_size): fine enough for sub-pixel face motion, coarse enough
# that a fast head turn (tens of px per frame) still fits in int8.
MIN_FLOW_STEP = 1 / 64


def quantize_flow(flow: np.ndarray) -> tuple[np.ndarray, float]:
    """int8 flow with one step per clip: 4x smaller than float16 and far more compressible."""
    peak = float(np.abs(flow).max()) if flow.size else 0.0
    step = max(MIN_FLOW_STEP, peak / 127.0)
    return np.clip(np.round(flow / step), -127, 127).astype(np.int8), step


def load_flow(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The flow artifact with `flow` dequantised to float32 (T-1, s, s, 2)."""
    data = load_npz(uri, storage_options)
    data["flow"] = data.pop("flow_q").astype(np.float32) * float(data["flow_step"])
    return data

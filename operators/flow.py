"""The `flow` stage: dense optical flow of a track's aligned crop and keypoint trajectories (the
algorithms and the storage format are `facefab.face.flow`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from facefab.face.flow import (
    BACKENDS,
    RAFT_UNAVAILABLE,
    chain_trajectories,
    dis_flow,
    initial_keypoints,
    load_raft,
    quantize_flow,
    raft_available,
    raft_flow,
)
from facefab.media.arrays import save_npz

from .base import Operator, OperatorError, Resources, register_stage
from .track_row import read_crop, video_frame_count


@register_stage
class OpticalFlow(Operator):
    """Dense flow + keypoint trajectories of the aligned crop (see module docstring).

    Artifact flow_uri (.npz): flow_q (T-1, s, s, 2) int8 and flow_step (px per unit; flow =
    flow_q * flow_step, see `load_flow`), trajectories (K, T, 2) float32, flow_size, backend.
    Columns: flow_uri, motion_mean (mean flow magnitude, px/frame at s).
    """

    name = "flow"
    version = "1"
    inputs = ("crop_uri",)
    outputs = ("flow_uri", "motion_mean")
    stateful = False
    default_resources = Resources(num_cpus=1.0)

    @dataclass
    class Config:
        flow_size: int = 128
        backend: str = "dis"
        raft_weights: str | None = None  # local state-dict file of torchvision raft_large
        num_keypoints: int = 64
        keypoint_quality: float = 0.01
        keypoint_min_distance: float = 4.0

    def __init__(self, config=None, ctx=None, resources=None):
        super().__init__(config, ctx, resources)
        # RAFT is a model worth loading once per worker, so it runs in an actor pool; DIS is
        # created per row in a plain task.
        self.stateful = self.config.backend == "raft"

    def setup(self) -> None:
        if self.config.backend not in BACKENDS:
            raise OperatorError(f"unknown flow backend {self.config.backend!r}; use one of {BACKENDS}")
        self._raft = None
        if self.config.backend == "raft":
            if not raft_available(self.config.raft_weights):
                raise OperatorError(RAFT_UNAVAILABLE)
            import torch

            self._device = "cuda" if self.ctx.use_gpu and torch.cuda.is_available() else "cpu"
            self._raft = load_raft(self.config.raft_weights, self._device)

    def dense_flow(self, frames: np.ndarray, gray: np.ndarray) -> np.ndarray:
        if self._raft is not None:
            return raft_flow(self._raft, frames, self._device)
        return dis_flow(gray)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        frames = read_crop(row, c.flow_size, video_frame_count(row), self.ctx.storage_options)
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        flow = self.dense_flow(frames, gray)
        start = initial_keypoints(gray[0], c.num_keypoints, c.keypoint_quality, c.keypoint_min_distance)
        trajectories = chain_trajectories(flow, start)
        uri = self.ctx.artifact_uri("flow", row["id"], ".npz")
        flow_q, step = quantize_flow(flow)
        save_npz(uri, self.ctx.storage_options, flow_q=flow_q, flow_step=np.float32(step),
                 trajectories=trajectories, flow_size=np.int32(c.flow_size), backend=np.array(c.backend))
        motion = float(np.linalg.norm(flow, axis=-1).mean()) if len(flow) else 0.0
        return {"flow_uri": uri, "motion_mean": motion}


__all__ = [
    "OpticalFlow",
    "chain_trajectories",
    "dis_flow",
    "initial_keypoints",
    "quantize_flow",
    "raft_available",
]

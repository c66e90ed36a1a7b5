"""`GeneratorOperator`: the stage base every generator shares (an actor per model replica, weights
loaded once in `setup()` through `facefab.models.weights`, crops pasted back into frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from facefab.models.shared.windows import window_spans
from facefab.models.weights import pick_device, pick_dtype

from .base import Operator, OperatorError, Resources

# -- the operator base ---------------------------------------------------------------------------------

class GeneratorOperator(Operator):
    """Base of generator operators: an actor per model replica, weights loaded once in `setup()`.

    Subclasses set `model_name` (the registry name) and implement `load(checkpoint_dir_or_uri)`
    returning the ready model (use `self.device`, `self.dtype`, `load_model`), plus `process_row`.
    The checkpoint comes from `Config.checkpoint`, else $FACEFAB_CHECKPOINT_<NAME>; without one,
    `load_default()` gives the weight-free default, or the row fails with a clear error.
    """

    stateful = True
    model_name: ClassVar[str] = ""
    default_resources = Resources(num_cpus=0.5, num_gpus=1.0)  # GPUs only requested when the run uses GPUs

    @dataclass
    class Config:
        checkpoint: str | None = None  # local folder or s3://... of a save_pretrained checkpoint
        dtype: str = "auto"  # auto: bf16 (fp16 without bf16 support) on CUDA, fp32 on CPU
        device: str = "auto"  # auto: the actor's GPU when it has one, else CPU
        window: int = 50  # frames per temporal window
        overlap: int = 10  # frames shared by consecutive windows, cross-faded
        cache_dir: str | None = None  # download cache for remote checkpoints

    def setup(self) -> None:
        self.device = pick_device(self.config.device)
        self.dtype = pick_dtype(self.config.dtype, self.device)
        window_spans(self.config.window + 1, self.config.window, self.config.overlap)  # validate early
        checkpoint = self.checkpoint_uri()
        self.model = self.load(checkpoint) if checkpoint else self.load_default()

    def checkpoint_uri(self) -> str | None:
        from facefab.models.registry import checkpoint_for

        return self.config.checkpoint or (checkpoint_for(self.model_name) if self.model_name else None)

    def load(self, checkpoint: str) -> Any:
        raise NotImplementedError

    def load_default(self) -> Any:
        from facefab.models.registry import env_var

        raise OperatorError(f"{self.name}: no checkpoint configured (set {type(self).__name__}.Config.checkpoint "
                            f"or ${env_var(self.model_name)}) and {self.model_name} has no weight-free default")

    @staticmethod
    def paste_crops(frames: np.ndarray, crops: np.ndarray, inverse: np.ndarray,
                    masks: np.ndarray | None = None) -> np.ndarray:
        """Paste aligned crops (T,S,S,3) back into frames (T,H,W,3) through the crop->frame affines
        (T,2,3) from preprocessing; `masks` (T,S,S) in [0,1] limit the pasted area (default: the
        whole crop, feathered)."""
        from facefab.face.alignment import paste_back

        if not len(frames) == len(crops) == len(inverse):
            raise ValueError(f"{len(frames)} frames, {len(crops)} crops, {len(inverse)} transforms")
        out = np.empty_like(frames)
        for t in range(len(frames)):
            out[t] = paste_back(frames[t], crops[t], inverse[t], None if masks is None else masks[t])
        return out


__all__ = [
    "GeneratorOperator",
    "pick_device",
    "pick_dtype",
    "window_spans",
]

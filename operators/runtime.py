"""Where operators run: Ray start-up (local or $RAY_ADDRESS), GPU detection, and the per-worker cap
on native thread pools. The pipelines' engine and the training runtime both start from here."""

from __future__ import annotations

import os

# MediaPipe/TFLite and glog print a few lines per model load in every worker; keep warnings+.
QUIET_NATIVE_LOGS = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}

def init_ray(num_cpus: int | None = None, progress: bool = True) -> None:
    """Connect to $RAY_ADDRESS when set, else start a local Ray sized to this machine."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True,
                     configure_logging=False, runtime_env={"env_vars": QUIET_NATIVE_LOGS})
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.enable_operator_progress_bars = progress


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def limit_threads(n: int, torch_too: bool = True) -> None:
    """Cap the native thread pools of a worker at its CPU share.

    OpenCV, the video codecs and torch size their pools to the whole machine; several workers on
    one node would each start that many threads and spend their time contending instead of
    working. torch_too=False leaves torch alone (and unimported) for tasks that do not use it.
    """
    import cv2

    from facefab.media import set_codec_threads

    cv2.setNumThreads(n)
    set_codec_threads(n)
    if not torch_too:
        return
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover - torch is a dependency, but keep workers importable
        pass

"""Where operators run: Ray start-up (local or $RAY_ADDRESS), GPU detection, and the per-worker cap
on native thread pools. The pipelines' engine and the training runtime both start from here."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading

from facefab.manifests.storage import StoreUnreachable

# MediaPipe/TFLite and glog print a few lines per model load in every worker; keep warnings+.
QUIET_NATIVE_LOGS = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}

def verbose_logs() -> bool:
    """Whether Ray's worker logs and native library output go to the console ($FACEFAB_VERBOSE,
    set by `facefab -v`); otherwise they stay in Ray's log folder (`ray_logs_dir()`)."""
    return os.environ.get("FACEFAB_VERBOSE", "").lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def native_stderr_to(path: str):
    """Send file descriptor 2 (where C++ code in this process writes: Ray's core worker, codecs) to
    `path` for the block and yield a file on the real console for the output meant for the user.
    On an exception the captured text is replayed to the console, so nothing is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    console = os.fdopen(os.dup(saved), "w", buffering=1)
    with open(path, "ab") as sink:
        start = sink.tell()
        os.dup2(sink.fileno(), 2)
    try:
        yield console
    except StoreUnreachable:
        raise  # says all there is in its one line; the captured text is Ray noting its workers' end
    except Exception:
        sys.stderr.flush()
        os.dup2(saved, 2)
        with open(path, "rb") as f:
            f.seek(start)
            console.write(f.read().decode(errors="replace")[-20000:])
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        console.close()


@contextlib.contextmanager
def quiet_console(verbose: bool | None = None):
    """Yield the stream for the user's console output. Unless verbose, everything else written to
    stderr meanwhile (native libraries, Ray's driver messages) goes to facefab-driver.log in Ray's log
    folder (or the temp folder before Ray starts)."""
    if verbose_logs() if verbose is None else verbose:
        yield sys.stderr
        return
    folder = ray_logs_dir() or tempfile.gettempdir()
    with native_stderr_to(os.path.join(folder, "facefab-driver.log")) as console:
        yield console


_SIGTERM_AS_INTERRUPT = False


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_interrupt(enable: bool = True):
    """Make SIGTERM (a scheduler stopping the job) raise KeyboardInterrupt in the main thread, so a
    run commits its finished rows and exits like on Ctrl-C. Ray's start-up installs its own fatal
    handler; `init_ray` puts this one back. Returns the previous handler."""
    global _SIGTERM_AS_INTERRUPT
    _SIGTERM_AS_INTERRUPT = enable
    return signal.signal(signal.SIGTERM, _interrupt) if enable else None


def init_ray(num_cpus: int | None = None, progress: bool = True, verbose: bool | None = None) -> None:
    """Connect to $RAY_ADDRESS when set, else start a local Ray sized to this machine.

    Unless `verbose`, the console stays quiet: worker output, Ray's start-up notices and its Data
    progress bars go to Ray's log folder (`ray_logs_dir()`), and the pipeline shows one progress
    line of its own (`progress`)."""
    import ray

    verbose = verbose_logs() if verbose is None else verbose
    if not ray.is_initialized():
        cpus = num_cpus or os.cpu_count() or 1
        kwargs = {"address": os.environ["RAY_ADDRESS"]} if os.environ.get("RAY_ADDRESS") else {
            "num_cpus": cpus, "include_dashboard": False, "runtime_env": {"env_vars": QUIET_NATIVE_LOGS},
            "_system_config": {"num_workers_soft_limit": idle_worker_limit(cpus)}}
        if verbose:
            ray.init(log_to_driver=True, configure_logging=False, **kwargs)
        else:
            captured = os.path.join(tempfile.gettempdir(), f"facefab-ray-init-{os.getpid()}.log")
            with native_stderr_to(captured):
                ray.init(log_to_driver=False, configure_logging=False, **kwargs)
            _move_into_logs(captured)
        if _SIGTERM_AS_INTERRUPT and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
    from ray.data import DataContext  # configures Ray Data's loggers: set their level after this

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)

    ctx = DataContext.get_current()
    # Ray Data stops a dataset after 30 min without a finished block; one row here (a long dub, a
    # long video's shot detection) may legitimately take longer. Hung workers are the crash
    # budget's and the store watch's business, not a wall-clock guess.
    ctx.execution_no_progress_timeout_s = -1
    ctx.enable_progress_bars = progress and verbose
    ctx.enable_operator_progress_bars = progress and verbose


def idle_worker_limit(cpus: int) -> int:
    """Worker processes a local Ray keeps instead of killing them once idle.

    Ray's default is one per CPU, counting the processes the stage actors hold. With the actors
    holding every CPU's worker, each probe or shots task found no idle worker and started a new
    Python process (about 2 s of CPU), which Ray killed a second after the task: on 4 shared videos
    4 task workers were started per run and they spent 14.7 CPU ms per frame; at this limit 1 was
    started and they spent 7.7 (preprocess, 2 cores, measured). A limit of 2 * cpus + 4 started no
    fewer and kept more idle workers' memory."""
    return cpus + 2


def ray_logs_dir() -> str | None:
    """This Ray session's log folder (worker output, raylet/GCS logs), or None before Ray starts."""
    try:
        import ray._private.worker as worker

        return worker._global_node.get_logs_dir_path() if worker._global_node else None
    except (ImportError, AttributeError):  # pragma: no cover - Ray internals moved
        return None


def _move_into_logs(captured: str) -> None:
    logs = ray_logs_dir()
    if logs and os.path.exists(captured):
        with open(captured, "rb") as src, open(os.path.join(logs, "facefab-driver.log"), "ab") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(captured)


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def joins_cluster() -> bool:
    """Whether a run joins an existing Ray cluster ($RAY_ADDRESS, as inside a RayJob), which may
    grow, instead of starting Ray on this machine, which does not."""
    return bool(os.environ.get("RAY_ADDRESS"))


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

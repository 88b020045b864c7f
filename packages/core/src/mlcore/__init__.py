"""mlcore: the shared training core (trainer loop, schedulers, accumulation, device strategies,
checkpoints with exact resume, profiling, distributed runs, CLI and dataset downloader).

Importing ``mlcore`` first sets the allocator environment variables that must be in place before
torch initialises a device (see :func:`configure_environment`); domain CLIs import it before torch.
"""

from __future__ import annotations

import os
import sys

# MPS reads these once, when torch initialises the device: set them before importing torch.
MPS_ENV_DEFAULTS = {
    # Tighter than the defaults (1.7 / 1.4) so the allocator frees cached blocks before macOS
    # starts swapping; users can still override either variable.
    "PYTORCH_MPS_HIGH_WATERMARK_RATIO": "1.4",
    "PYTORCH_MPS_LOW_WATERMARK_RATIO": "1.0",
    # Ops MPS lacks run on the CPU instead of failing the run.
    "PYTORCH_ENABLE_MPS_FALLBACK": "1",
}


ENVIRONMENT_CONFIGURED = False
TORCH_IMPORTED_FIRST = False
"""True when torch was already imported when :func:`configure_environment` ran (the OpenMP settings
then came too late for this process; domain packages import ``mlcore`` first to avoid that)."""


def cpu_env_defaults() -> dict[str, str]:
    """OpenMP settings that keep a CPU run fast next to other jobs (issue 17): ``OMP_WAIT_POLICY=PASSIVE``
    (idle OpenMP threads sleep instead of spinning: two PyTorch jobs on the same cores ran at 0.12x
    of alone with the default policy, 0.53x with PASSIVE) and ``OMP_NUM_THREADS`` = the cores this
    process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where that does not exist), so a
    job limited by ``taskset``/cgroups does not start a thread per host core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS / Windows
        cores = os.cpu_count() or 1
    return {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(max(1, cores))}


def configure_environment(platform: str = sys.platform) -> dict[str, str]:
    """Set process-wide variables torch reads once at start-up, unless the user already set them:
    the OpenMP wait policy and thread count (:func:`cpu_env_defaults`, every platform) and the MPS
    allocator/fallback variables (macOS only). ``--torch-threads`` style flags still override the
    thread count later (``torch.set_num_threads``).

    Returns the variables this call set.
    """
    global ENVIRONMENT_CONFIGURED, TORCH_IMPORTED_FIRST
    ENVIRONMENT_CONFIGURED = True
    TORCH_IMPORTED_FIRST = "torch" in sys.modules
    applied: dict[str, str] = {}
    wanted = dict(cpu_env_defaults())
    if platform == "darwin":
        wanted.update(MPS_ENV_DEFAULTS)
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


configure_environment()

from mlcore.callbacks import BestCheckpoint, Callback, EarlyStopping  # noqa: E402
from mlcore.config import ConfigError, TrainConfig  # noqa: E402
from mlcore.data import BadSampleLog, ResumableSampler, make_loader  # noqa: E402
from mlcore.devices import DeviceStrategy, build_strategy  # noqa: E402
from mlcore.metrics import Metric  # noqa: E402
from mlcore.schedulers import build_scheduler  # noqa: E402
from mlcore.trainer import NonFiniteLossError, Trainer, TrainState  # noqa: E402

__all__ = [
    "BadSampleLog", "BestCheckpoint", "Callback", "ConfigError", "DeviceStrategy", "EarlyStopping", "Metric",
    "NonFiniteLossError", "ResumableSampler", "TrainConfig", "TrainState", "Trainer", "build_scheduler",
    "build_strategy", "configure_environment", "make_loader",
]

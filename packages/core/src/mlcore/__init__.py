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


def configure_environment(platform: str = sys.platform) -> dict[str, str]:
    """Set the MPS allocator/fallback variables (macOS only) unless the user already set them.

    Returns the variables this call set.
    """
    global ENVIRONMENT_CONFIGURED
    ENVIRONMENT_CONFIGURED = True
    applied: dict[str, str] = {}
    if platform == "darwin":
        for key, value in MPS_ENV_DEFAULTS.items():
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
from mlcore.trainer import NonFiniteLossError, Trainer  # noqa: E402

__all__ = [
    "BadSampleLog", "BestCheckpoint", "Callback", "ConfigError", "DeviceStrategy", "EarlyStopping", "Metric",
    "NonFiniteLossError", "ResumableSampler", "TrainConfig", "Trainer", "build_scheduler",
    "build_strategy", "configure_environment", "make_loader",
]

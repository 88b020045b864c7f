"""One seed for python, numpy and torch (and loader workers); deterministic algorithms on request."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (CPU and every CUDA device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Turn deterministic algorithms on or off (``torch.use_deterministic_algorithms``).

    Also sets ``CUBLAS_WORKSPACE_CONFIG`` (required by cuBLAS for determinism) and disables the
    cuDNN autotuner, which picks kernels by timing and so is not reproducible.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of (run seed, epoch, sample index).

    Uses the SplitMix64 finaliser so neighbouring indices get unrelated streams.
    """
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x >> 1


def get_rng_state() -> dict[str, Any]:
    """The python, numpy, torch CPU and CUDA RNG states (CUDA only if initialised)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # as tensors and plain numbers so checkpoints load with torch.load(weights_only=True)
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`get_rng_state`."""
    random.setstate(_as_python_state(state["python"]))
    np.random.set_state(_as_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(s: Any) -> tuple:
    # weights_only checkpoints turn tuples into lists; random.setstate needs tuples.
    return (s[0], tuple(s[1]), s[2])


def _as_numpy_state(s: Any) -> tuple:
    keys = s[1].numpy() if isinstance(s[1], torch.Tensor) else np.asarray(s[1])
    return (s[0], keys.astype(np.uint32), int(s[2]), int(s[3]), float(s[4]))

"""Metric protocol for the trainer: states are tensors summed across a split (and across ranks).

A metric accumulates *sums* (true positives, per-image IoU totals, counts, ...) so that the value
over a whole split, and over all DDP ranks, is computed once at the end from the summed states,
never averaged from per-batch values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


class Metric:
    """Base class for split-level metrics.

    Subclasses call :meth:`add_state` in ``__init__`` for every tensor that is a sum over samples,
    implement :meth:`update` (called once per evaluation batch with the step outputs and the
    batch) and :meth:`compute` (returns ``{name: float}``). The trainer sums the states across
    ranks before ``compute`` under DDP, so ``compute`` sees the global sums.
    """

    def __init__(self) -> None:
        self._defaults: dict[str, torch.Tensor] = {}

    def add_state(self, name: str, default: torch.Tensor) -> None:
        """Register a summable tensor state (float64 or int64 recommended) named ``name``."""
        self._defaults[name] = default.detach().clone()
        setattr(self, name, default.detach().clone())

    def reset(self) -> None:
        """Reset every state to its default, keeping the device the state is on."""
        for name, default in self._defaults.items():
            current = getattr(self, name, default)
            setattr(self, name, default.clone().to(current.device))

    def to(self, device: torch.device | str) -> Metric:
        """Move all states to ``device`` (the strategy's metric device)."""
        for name in self._defaults:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def states(self) -> dict[str, torch.Tensor]:
        """The current state tensors by name."""
        return {name: getattr(self, name) for name in self._defaults}

    def sync(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace each state with ``all_reduce(state)`` (a SUM across ranks)."""
        for name in self._defaults:
            setattr(self, name, all_reduce(getattr(self, name)))

    def update(self, outputs: Mapping[str, Any], batch: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

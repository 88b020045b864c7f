"""Learning-rate schedules, stepped once per optimizer update.

All schedules are closed forms of the optimizer-step index ``s`` (0-based, the number of updates
done so far), wrapped in :class:`torch.optim.lr_scheduler.LambdaLR` so their state is the standard
scheduler ``state_dict``. Warmup is linear from ``warmup_start_factor * base_lr`` to ``base_lr``
over ``W`` updates, as in Goyal et al. 2017 ("Accurate, Large Minibatch SGD"); cosine decay follows
Loshchilov & Hutter 2017 (SGDR) without restarts, down to ``min_lr``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SCHEDULERS = ("cosine", "constant", "step")


def total_optimizer_steps(batches_per_epoch: int, accum_steps: int, epochs: int) -> int:
    """Optimizer updates in a run: ``ceil(batches_per_epoch / accum_steps) * epochs``.

    The last, shorter accumulation window of an epoch still makes one update.
    """
    if batches_per_epoch < 1 or accum_steps < 1 or epochs < 0:
        raise ValueError(
            f"need batches_per_epoch >= 1, accum_steps >= 1, epochs >= 0 "
            f"(got {batches_per_epoch}, {accum_steps}, {epochs})"
        )
    return math.ceil(batches_per_epoch / accum_steps) * epochs


def lr_factor(
    step: int,
    *,
    name: str,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start_factor: float = 0.0,
    min_lr_ratio: float = 0.0,
    step_size: int = 1,
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base LR after ``step`` optimizer updates (closed form).

    - warmup (``step < warmup_steps``): ``f0 + (1 - f0) * step / warmup_steps``
    - ``cosine``: ``r + (1 - r) * 0.5 * (1 + cos(pi * t))`` with ``t = (step - W) / (T - W)``
      clamped to [0, 1] and ``r = min_lr / base_lr``
    - ``constant``: 1
    - ``step``: ``gamma ** ((step - W) // step_size)``

    Raises:
        ValueError: unknown schedule name.
    """
    if step < warmup_steps:
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
    if name == "constant":
        return 1.0
    if name == "step":
        return gamma ** ((step - warmup_steps) // max(1, step_size))
    if name == "cosine":
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, max(0.0, (step - warmup_steps) / span))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str = "cosine",
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start_factor: float = 0.0,
    min_lr: float = 0.0,
    step_size: int = 1,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`; call ``.step()`` once per optimizer update.

    ``min_lr`` is absolute (same units as the optimizer's lr) and is applied per parameter group
    relative to that group's initial lr.

    Raises:
        ValueError: unknown name, negative warmup, or ``warmup_start_factor`` outside [0, 1].
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    if warmup_steps < 0 or not 0.0 <= warmup_start_factor <= 1.0:
        raise ValueError(
            f"warmup_steps must be >= 0 and warmup_start_factor in [0, 1] "
            f"(got {warmup_steps}, {warmup_start_factor})"
        )

    def make(base_lr: float) -> Callable[[int], float]:
        ratio = min_lr / base_lr if base_lr > 0 else 0.0
        return lambda s: lr_factor(
            s,
            name=name,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            warmup_start_factor=warmup_start_factor,
            min_lr_ratio=ratio,
            step_size=step_size,
            gamma=gamma,
        )

    bases = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [make(b) for b in bases])

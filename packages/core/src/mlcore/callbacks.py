"""Callbacks: the hook API of the training loop, early stopping and best-by-metric (top-k) checkpoints.

Monitored names are ``<split>_<metric>``, e.g. ``val_iou`` or ``val_loss``, matching the keys of
:meth:`mlcore.trainer.Trainer.evaluate` prefixed by the split.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mlcore.trainer import Trainer, TrainState

log = logging.getLogger(__name__)


class Callback:
    """Hooks the trainer calls; state in :meth:`state_dict` is saved in ``last.pt`` for resume.

    Override any of the hooks below; the trainer calls a hook only on the callbacks that override it
    (a callback without overrides costs nothing in the loop). The order within one
    :meth:`~mlcore.trainer.Trainer.fit` call (one stage)::

        on_fit_start
        on_stage_start                      (not for a stage a resumed run skips as completed)
        per epoch:
            per optimizer update:
                on_train_batch_end x micro-batches of the accumulation window
                [on_window_retry, then on_train_batch_end again x the halved micro-batches]   (OOM back-off)
                on_update_end
                [on_evaluate]               (--eval-every-steps)
            [on_evaluate]                   (--eval-every-epochs)
            on_epoch_end
        on_fit_end                          (returned: stage done, --max-steps, early stopping)
        on_exception                        (instead of on_fit_end when an exception leaves fit)

    ``state`` is the stage's :class:`~mlcore.trainer.TrainState` (``stage``, ``stage_step``, ``epoch``,
    ``batch_in_epoch``, ``optimizer``, ``scheduler``, ``cfg``, ...); the run-wide step is
    ``trainer.global_step``. Set ``trainer.should_stop = True`` to stop the stage after the current
    update (as :class:`EarlyStopping` does).

    States are saved under :attr:`state_key` (the class name unless a subclass says otherwise), so a
    run resumed with callbacks added, removed or reordered gives each callback its own state; a
    callback with no saved state starts fresh (the trainer logs one line).
    """

    @property
    def state_key(self) -> str:
        """Name of this callback's entry in ``last.pt`` (unique per trainer; duplicates get ``#2``...)."""
        return type(self).__qualname__

    def on_fit_start(self, trainer: Trainer) -> None:
        """At the start of every ``fit`` call, before the stage's optimizer is built (also for a stage
        that a resumed run skips because it completed)."""

    def on_stage_start(self, trainer: Trainer, state: TrainState) -> None:
        """Once the stage's optimizer, scheduler and scaler exist and a resumed run's position is
        restored, before its first update."""

    def on_train_batch_end(self, trainer: Trainer, state: TrainState, outputs: dict[str, Any]) -> None:
        """After each micro-batch's backward; ``outputs`` is the training step's mapping, tensors
        detached (``outputs["loss"]``: the micro-batch's mean loss). A loaded batch is one micro-batch
        unless an out-of-memory back-off split it; a window retried after an OOM calls it again.
        ``state.stage_step`` still counts the updates before this window."""

    def on_window_retry(self, trainer: Trainer, state: TrainState) -> None:
        """An accumulation window ran out of memory and is about to be retried with halved micro-batches
        (the OOM back-off): the failed attempt's gradients are dropped, so a callback that collects per-update
        values from :meth:`on_train_batch_end` (or from a wrapped training step) drops that attempt's too."""

    def on_update_end(self, trainer: Trainer, state: TrainState, loss: float) -> None:
        """After each optimizer update (scheduler stepped, EMA updated, ``trainer.global_step`` and
        ``state.stage_step`` counted); ``loss`` is the window's mean loss (summed over ranks / world
        size), NaN for an update skipped as non-finite (``--max-bad-steps``). Called before that step's
        evaluation and checkpoint, so rows logged here with :meth:`~mlcore.trainer.Trainer.log_row` are in
        that ``last.pt``."""

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After every evaluation; ``metrics`` are ``<split>_<name>`` keys."""

    def on_epoch_end(self, trainer: Trainer, state: TrainState) -> None:
        """After an epoch's last update and its evaluation, before ``last.pt`` is written (so state set
        here is saved); ``state.epoch`` is then the number of epochs done."""

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        """An exception is leaving ``fit`` (a non-finite loss, a stop signal's
        :class:`~mlcore.trainer.TrainingInterrupted`, out of memory, a bug); it is re-raised afterwards.
        ``trainer.state`` is the stage's state (the previous stage's, or None, when the exception came
        before ``on_stage_start``)."""

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """``fit`` returned ``summary`` (the stage completed, or stopped at ``--max-steps`` or by early
        stopping: ``summary["completed"]`` says which)."""

    def state_dict(self) -> dict[str, Any]:
        """State to save in ``last.pt`` (plain Python values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume."""


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max' (got {mode!r})")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` evaluations.

    Args:
        monitor: e.g. ``"val_iou"``.
        mode: ``"max"`` (higher is better) or ``"min"``.
        patience: evaluations without improvement before stopping (>= 1).
        min_delta: minimum change that counts as an improvement (absolute, >= 0).
    """

    def __init__(self, monitor: str, mode: str = "min", patience: int = 3, min_delta: float = 0.0) -> None:
        _check_mode(mode)
        if patience < 1 or min_delta < 0:
            raise ValueError(f"patience must be >= 1 and min_delta >= 0 (got {patience}, {min_delta})")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.bad_evals = 0

    @property
    def state_key(self) -> str:
        return f"EarlyStopping[{self.monitor}]"

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            return
        value = metrics[self.monitor]
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            log.info("early stopping: %s did not improve for %d evaluations (best %.6g)",
                     self.monitor, self.bad_evals, self.best if self.best is not None else float("nan"))
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]


class BestCheckpoint(Callback):
    """Best-by-metric checkpoints (weights + config), as Lightning's ``ModelCheckpoint(save_top_k=k)``.

    ``checkpoints/best_<metric>.pt`` always holds the best evaluation so far of each monitored metric.
    With ``top_k`` > 1 the ``top_k`` best evaluations are also kept as ``best_<metric>-step_NNNNNN.pt``
    (the global optimizer step of the evaluation); a new one that beats the worst kept replaces it (that
    file is deleted), and ``best_<metric>.pt`` is a hard link to the best of them (no extra disk).
    Non-finite values never count; ties keep the earlier evaluation. Files are written and deleted by
    global rank 0 only (under FSDP every rank takes part in gathering the weights).

    Args:
        monitors: ``[(name, mode), ...]``, any number, e.g. ``[("val_iou", "max"), ("val_loss", "min")]``.
        top_k: evaluations kept per metric (>= 1; ``--save-top-k``).
    """

    def __init__(self, monitors: list[tuple[str, str]], top_k: int = 1) -> None:
        for _, mode in monitors:
            _check_mode(mode)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 (got {top_k})")
        self.monitors = list(monitors)
        self.top_k = top_k
        self.best: dict[str, dict[str, float]] = {}
        # top_k > 1: per metric the kept evaluations, best first: {"value", "epoch", "step", "file"}
        self.kept: dict[str, list[dict[str, Any]]] = {}

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        for name, mode in self.monitors:
            if name not in metrics:
                continue
            value = metrics[name]
            prev = self.best.get(name, {}).get("value")
            improved = _improved(value, prev, mode, 0.0)
            entry = {"value": value, "epoch": trainer.epoch, "step": trainer.global_step}
            extra = {"metric": name, "value": value, "metrics": metrics}
            if self.top_k == 1:
                if improved:
                    self.best[name] = entry
                    trainer.save_weights(f"best_{name}.pt", extra=extra)
                continue
            file = f"best_{name}-step_{trainer.global_step:06d}.pt"
            kept = [e for e in self.kept.get(name, []) if e["file"] != file]  # the same step evaluated again
            if not math.isfinite(value) or (len(kept) >= self.top_k
                                            and not _improved(value, kept[-1]["value"], mode, 0.0)):
                self.kept[name] = kept
                continue
            trainer.save_weights(file, extra=extra)
            kept.append({**entry, "file": file})
            kept.sort(key=lambda e: e["value"], reverse=mode == "max")  # stable: ties keep the earlier first
            for e in kept[self.top_k:]:
                trainer.remove_checkpoint(e["file"])
            self.kept[name] = kept[:self.top_k]
            if improved:
                self.best[name] = entry
                trainer.link_checkpoint(file, f"best_{name}.pt")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "kept": self.kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.kept = dict(state.get("kept", {}))  # checkpoints from before --save-top-k: none kept yet

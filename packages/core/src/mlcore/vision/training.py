"""Training helpers shared by the classification domains: checkpoints that name their classes, per-epoch
training statistics (accuracy, F1, loss parts, samples/s, memory), loader worker counts."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlcore.callbacks import Callback
from mlcore.config import ConfigError, TrainConfig, opt
from mlcore.metrics import ClassificationMetrics
from mlcore.trainer import Trainer


def capped_workers(requested: int) -> int:
    """``requested`` loader workers capped at the CPUs this process may run on (``os.sched_getaffinity``
    where available, else ``os.cpu_count()``); seed 002's 4 workers become 2 on a 2-core machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(requested, cores))


class ClassifierTrainer(Trainer):
    """:class:`mlcore.Trainer` whose every checkpoint (``last.pt``, ``best_*.pt``, ``save_weights``) also holds
    ``num_classes``, ``classes`` (class folder names / ids, in model-output order) and ``labels`` (display
    names), so evaluation, prediction and export need nothing beside the file (seed 002's checkpoint keys).

    Args:
        classes, labels: in model-output order, equal lengths.
        everything else: as :class:`mlcore.Trainer`.
    """

    def __init__(self, *args: Any, classes: Sequence[str], labels: Sequence[str], **kwargs: Any) -> None:
        if len(classes) != len(labels):
            raise ValueError(f"classes/labels: expected equal lengths, got {len(classes)}/{len(labels)}")
        self.class_info = {"num_classes": len(classes), "classes": list(classes), "labels": list(labels)}
        super().__init__(*args, **kwargs)

    def _write_checkpoint(self, obj: dict[str, Any], name: str) -> Path:
        return super()._write_checkpoint({**obj, **self.class_info}, name)


def peak_memory_mb(trainer: Trainer) -> float:
    """Peak memory in MiB: the device's (CUDA/MPS) where it reports one, else this process's peak resident
    set size (``getrusage``; ``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    device = trainer.strategy.peak_memory_mb()
    if device is not None:
        return round(float(device), 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


class EpochTrainStats(Callback):
    """Training-side statistics per evaluation period (an epoch by default), as seed 002 logs them.

    :meth:`wrap` wraps the step function: while the model trains it scores the step's ``logits`` against
    the batch's hard ``label`` (mixed batches score the first label of each pair) in a fresh
    :class:`~mlcore.metrics.ClassificationMetrics`, sums the step outputs named ``loss_parts`` (e.g. the CE
    and focal terms) weighted by batch size, and times the steps. At each evaluation (:meth:`on_evaluate`)
    the period's ``top1``, ``top5``, ``f1``, ``precision``, ``recall``, the mean parts, ``samples_per_s`` (of
    the training steps) and ``memory_mb`` (:func:`peak_memory_mb`) are added to the trainer's training row of
    that step in ``metrics.jsonl`` (and TensorBoard ``train/<name>``), then reset.

    Counted on this process only (rank 0's shard under DDP); an out-of-memory retry counts its batch again.
    """

    state_key = "epoch_train_stats"

    def __init__(self, num_classes: int, loss_parts: Sequence[str] = ()) -> None:
        self.metric = ClassificationMetrics(num_classes)
        self.loss_parts = tuple(loss_parts)
        self._reset()

    def _reset(self) -> None:
        self.metric.reset()
        self.sums = dict.fromkeys(self.loss_parts, 0.0)
        self.samples = 0
        self.t_first: float | None = None
        self.t_last = 0.0

    def wrap(self, step: Callable[[torch.nn.Module, Any], Mapping[str, Any]]):
        """The step function with the training-side bookkeeping added (outputs unchanged)."""

        def wrapped(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> Mapping[str, Any]:
            if not model.training:
                return step(model, batch)
            t0 = time.perf_counter()
            if self.t_first is None:
                self.t_first = t0
            out = step(model, batch)
            labels = batch["label"]
            n = int(labels.shape[0])
            logits = out["logits"].detach().float().cpu()
            self.metric.update({"logits": logits}, {"label": labels.detach().cpu()})
            for key in self.loss_parts:
                self.sums[key] += float(out[key].detach()) * n
            self.samples += n
            self.t_last = time.perf_counter()
            return out

        return wrapped

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if not self.samples:
            return
        stats = {k: v for k, v in self.metric.compute().items() if "/" not in k}
        stats.update({k: v / self.samples for k, v in self.sums.items()})
        elapsed = self.t_last - (self.t_first or self.t_last)
        stats["samples_per_s"] = round(self.samples / elapsed, 3) if elapsed > 0 else None
        stats["memory_mb"] = peak_memory_mb(trainer)
        row = next((r for r in reversed(trainer.history)
                    if r.get("split") == "train" and r.get("step") == trainer.global_step), None)
        if row is None:
            row = {"epoch": trainer.epoch, "step": trainer.global_step, "stage": trainer.stage, "split": "train"}
            trainer.history.append(row)
        row.update(stats)
        trainer.logger.rewrite_metrics(trainer.history)
        for k, v in stats.items():
            if v is not None:
                trainer.logger.scalar(f"train/{k}", float(v), trainer.global_step)
        self._reset()


@dataclass
class ClassificationConfig(TrainConfig):
    """:class:`mlcore.config.TrainConfig` plus the options every image-classification ``<domain>-train`` has:
    how the splits a dataset lacks are carved (:func:`mlcore.vision.load_index`), unreadable photos, and
    top-1 as the monitored metric."""

    val_fraction: float = opt(0.2, "per-class fraction of train held out for validation (checkpoint selection), "
                              "when the dataset has no val split (seeded by --seed)")
    test_fraction: float = opt(0.15, "per-class fraction held out once for test (reported only), when the dataset "
                               "has no test split (seeded by --test-seed)")
    test_seed: int = opt(0, "seed of the test carve, independent of --seed so the test photos never change")
    skip_bad_images: bool = opt(False, "skip (log and count in summary.json) unreadable photos instead of stopping")
    monitor: str = opt("val_top1", "metric for early stopping and the best checkpoint")
    monitor_mode: str = opt("max", "the monitored metric should go up", choices=("min", "max"))

    def validate(self) -> None:
        super().validate()
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in (0, 1) (got {self.val_fraction})")
        if not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"--test-fraction must be in [0, 1) with --val-fraction + --test-fraction < 1 "
                              f"(got {self.test_fraction} and {self.val_fraction})")


BAD_IMAGE_HINT = "pass --skip-bad-images to skip unreadable photos (they are listed in summary.json)"
"""Appended to the error of an unreadable training photo."""

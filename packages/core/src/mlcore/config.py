"""The training configuration shared by every ``<domain>-train``.

Domains subclass :class:`TrainConfig` (a dataclass) to add their own fields and defaults; the
CLI builder in :mod:`mlcore.cli` turns every field into a flag. ``metadata={"help": ...}`` on a
field is its ``--help`` text; ``metadata={"choices": (...)}`` restricts its values.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcore.checkpoint import config_domain, load_checkpoint
from mlcore.devices import DEVICE_FORMS, PRECISIONS, DeviceError, check_device
from mlcore.schedulers import SCHEDULERS


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the flag and what was expected."""


def opt(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with ``--help`` text (and optional ``choices``, and ``aliases``: extra flag
    names such as ``("--checkpoint",)``)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    """Flags every ``<domain>-train`` accepts (DESIGN.md). Units: lr in optimizer units, steps are
    optimizer updates, image_size in px."""

    data: str | None = opt(None, "dataset root folder (or the folder that contains it)")
    out: str = opt("runs/train", "run directory to write (config, metrics, checkpoints, TensorBoard)")
    epochs: int = opt(10, "training epochs")
    max_steps: int | None = opt(None, "stop after this many optimizer updates (the schedule keeps its epoch-based length)")
    batch_size: int = opt(32, "micro-batch size per process")
    accum_steps: int = opt(1, "micro-batches per optimizer update (effective batch = batch_size x accum_steps x world size)")
    lr: float = opt(1e-3, "peak learning rate")
    weight_decay: float = opt(0.0, "AdamW/SGD weight decay (not applied to biases and norm layers)")
    optimizer: str = opt("adamw", "optimizer", choices=("adamw", "sgd"))
    momentum: float = opt(0.9, "SGD momentum")
    scheduler: str = opt("cosine", "LR schedule after warmup", choices=SCHEDULERS)
    warmup_steps: int = opt(0, "linear warmup length in optimizer updates")
    warmup_epochs: float = opt(0.0, "linear warmup length in epochs (used when --warmup-steps is 0)")
    warmup_start_factor: float = opt(0.0, "warmup starts at this fraction of the peak LR")
    min_lr: float = opt(0.0, "final LR of the cosine schedule")
    step_size: int = opt(1000, "step schedule: updates between decays")
    gamma: float = opt(0.1, "step schedule: decay factor")
    image_size: int = opt(224, "input image size in px (square)")
    device: str = opt("auto", f"device: {DEVICE_FORMS} (auto picks cuda > mps > cpu)")
    precision: str = opt("auto", "autocast precision (auto: bf16/fp16 on GPUs, fp32 on CPU)", choices=PRECISIONS)
    channels_last: bool = opt(False, "channels-last memory format for 4-D weights and batches")
    compile: bool = opt(False, "torch.compile the model")
    strategy: str = opt("ddp", "how torchrun's processes share the model: ddp (a full replica each) or fsdp "
                        "(FSDP2: parameters, gradients and optimizer state sharded; sharded checkpoints)",
                        choices=("ddp", "fsdp"))
    grad_checkpointing: bool = opt(False, "activation checkpointing: recompute each block the model marks "
                                   "(model.block_classes) in backward instead of storing its activations")
    num_workers: int = opt(2, "data-loader worker processes")
    seed: int = opt(0, "seed for python, numpy, torch and loader workers")
    deterministic: bool = opt(False, "use deterministic algorithms only")
    resume: str | None = opt(None, "resume from a run directory or a checkpoint (last.pt, last.dcp, or a "
                             "--keep-last checkpoints/step_NNNNNN.pt to roll back to that step)")
    profile: bool = opt(False, "profile a few steps with torch.profiler (trace under <out>/profile)")
    profile_steps: int = opt(3, "optimizer steps --profile records (after 1 skipped and 1 warmup step)")
    pretrained: bool = opt(True, "start from pretrained weights where the model has them")
    weights: str | None = opt(None, "initialise the model from this checkpoint file")
    clip_grad_norm: float | None = opt(1.0, "clip the global gradient norm to this value (none: off)")
    max_bad_steps: int = opt(0, "skip up to N optimizer updates whose loss or gradients are NaN/inf, one log line "
                             "each (0: stop at the first; weights are never updated with them)")
    ema_decay: float | None = opt(None, "keep an EMA of the weights with this decay and evaluate it")
    ema_warmup: bool = opt(False, "EMA warmup as timm's ModelEmaV3: decay min(ema_decay, 1 - (1 + n)^(-2/3)) "
                                  "after n updates")
    eval_every_epochs: int = opt(1, "evaluate every N epochs")
    eval_every_steps: int | None = opt(None, "also evaluate every N optimizer updates")
    monitor: str = opt("val_loss", "metric for early stopping and the best checkpoint (<split>_<name>)")
    monitor_mode: str = opt("min", "whether the monitored metric should go down or up", choices=("min", "max"))
    best_monitors: str | None = opt(None, "extra best checkpoints, e.g. 'val_loss:min,val_f1:max' "
                                    "(best_<metric>.pt each; --monitor always gets one)")
    early_stopping_patience: int | None = opt(None, "stop after N evaluations without improvement (none: off)")
    early_stopping_min_delta: float = opt(0.0, "smallest change of the monitored metric that counts")
    checkpoint_every_steps: int | None = opt(None, "also write last.pt every N optimizer updates")
    keep_last: int = opt(0, "also keep the N latest saves of last.pt as checkpoints/step_NNNNNN.pt (same "
                         "content, hard links; step_NNNNNN.dcp/ for sharded runs); older ones are deleted (0: off)")
    save_top_k: int = opt(1, "best checkpoints kept per monitored metric: best_<metric>.pt is the best; with K > 1 "
                          "also best_<metric>-step_NNNNNN.pt for the K best evaluations (worse ones deleted)")
    log_every_steps: int = opt(10, "log train loss and LR every N optimizer updates")
    empty_cache_every: int = opt(0, "release the allocator cache every N updates (MPS default 50)")

    def validate(self) -> None:
        """Check values; raises :class:`ConfigError` naming the flag."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accum_steps": self.accum_steps,
                    "image_size": self.image_size, "eval_every_epochs": self.eval_every_epochs,
                    "log_every_steps": self.log_every_steps,
                    "profile_steps": self.profile_steps, "save_top_k": self.save_top_k}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{flag(name)} must be >= 1 (got {value})")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0 (got {self.lr})")
        nonneg = {"weight_decay": self.weight_decay, "warmup_steps": self.warmup_steps,
                  "warmup_epochs": self.warmup_epochs, "min_lr": self.min_lr, "num_workers": self.num_workers,
                  "max_bad_steps": self.max_bad_steps, "keep_last": self.keep_last}
        for name, value in nonneg.items():
            if value < 0:
                raise ConfigError(f"--{flag(name)} must be >= 0 (got {value})")
        if not 0 <= self.warmup_start_factor <= 1:
            raise ConfigError(f"--warmup-start-factor must be in [0, 1] (got {self.warmup_start_factor})")
        for name in ("max_steps", "eval_every_steps", "checkpoint_every_steps", "early_stopping_patience"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{flag(name)} must be >= 1 or none (got {v})")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ConfigError(f"--clip-grad-norm must be > 0 or none (got {self.clip_grad_norm})")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"--ema-decay must be in (0, 1) (got {self.ema_decay})")
        if self.strategy == "fsdp" and self.ema_decay is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("--ema-decay is not supported with --strategy fsdp yet (the EMA copy would be "
                              "unsharded); use --strategy ddp or drop --ema-decay")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"--{flag(f.name)} must be one of {', '.join(map(str, choices))} "
                                  f"(got {getattr(self, f.name)!r})")
        self.best_monitor_list()
        try:
            self.device = check_device(self.device)
        except DeviceError as exc:
            raise ConfigError(str(exc)) from None
        if self.data is not None and not Path(self.data).exists():
            raise ConfigError(f"--data {self.data}: folder not found")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ConfigError(f"--weights {self.weights}: file not found")
        if self.weights is not None and not self.resume:
            # fail before any data is scanned: empty, truncated, unsafe or another domain's file
            # (CheckpointError, one line, exit 1)
            load_checkpoint(self.weights, expect_domain=config_domain(self), flag="--weights", mmap=True)

    def best_monitor_list(self) -> list[tuple[str, str]]:
        """``[(metric, mode), ...]`` for best checkpoints: ``--monitor`` first, then ``--best-monitors``."""
        pairs = [(self.monitor, self.monitor_mode)]
        for item in filter(None, (self.best_monitors or "").split(",")):
            name, _, mode = item.strip().partition(":")
            if not name or mode not in ("min", "max"):
                raise ConfigError(f"--best-monitors: expected NAME:min or NAME:max items, got {item.strip()!r}")
            if name != self.monitor:
                pairs.append((name, mode))
        return pairs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sample_data_dir(name: str) -> str | None:
    """``$MLDATA_ROOT/<name>`` when that folder exists (a domain's default ``--data``), else None."""
    root = os.environ.get("MLDATA_ROOT")
    if root and (Path(root) / name).is_dir():
        return str(Path(root) / name)
    return None


def flag(name: str) -> str:
    """Field name to flag name: ``accum_steps`` -> ``accum-steps``."""
    return name.replace("_", "-")

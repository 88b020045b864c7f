"""``plantid-train``: plant identification on mlcore, a frozen-backbone warmup stage then full fine-tuning.

Both stages are ``Trainer.fit`` calls on one run directory (``--resume RUN_DIR`` skips a finished
stage). With ``--gpu-aug`` the loader yields ``(N, 3, S, S) uint8`` batches and the step function
augments them with kornia on the training device; with ``--no-gpu-aug`` the workers deliver
augmented, normalised float32 batches. Besides mlcore's run directory, each run writes
``training_config.json`` (every parameter, effective batch, device, per-stage timings) and
``label_mapping.json``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from mlcore import make_loader
from mlcore.checkpoint import CheckpointError, load_checkpoint
from mlcore.cli import train_main
from mlcore.data import BadSampleLog
from mlcore.reports import confusion_png
from mlcore.runlog import write_json_atomic
from mlcore.seed import seed_everything
from mlcore.trainer import with_overrides
from mlcore.vision import (
    BAD_IMAGE_HINT,
    ClassifierTrainer,
    DataError,
    EpochTrainStats,
    ImageDataset,
    ImageIndex,
    eval_transform,
    load_index,
    resolve_data_config,
)
from plantid.augment import DeviceAugmentation, DeviceNormalize
from plantid.config import PlantIdConfig
from plantid.data import decode_transform, train_transform
from plantid.losses import classification_loss
from plantid.metrics import ClassificationMetrics
from plantid.models import build_model, freeze_backbone, param_count

log = logging.getLogger("plantid.train")


def make_step(label_smoothing: float = 0.0, augment: torch.nn.Module | None = None,
              normalize: torch.nn.Module | None = None):
    """``step(model, batch) -> {"loss", "logits"}`` for :class:`mlcore.Trainer`.

    A ``uint8`` batch (``--gpu-aug``) is augmented by ``augment`` (kornia, on the batch's device) while
    ``model.training``, and only normalised (``normalize``, default
    :class:`~plantid.augment.DeviceNormalize` with ImageNet statistics) otherwise; a float batch
    (``--no-gpu-aug`` and every evaluation) is used as it is. ``batch["image"]``: ``(N, 3, S, S)`` uint8 or
    float32; ``batch["label"]``: ``(N,)`` int64.
    """
    normalize = normalize if normalize is not None else DeviceNormalize()
    placed: dict[str, torch.device] = {}

    def on(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        key = str(id(module))
        if placed.get(key) != device:
            module.to(device)
            placed[key] = device
        return module

    def step(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        if x.dtype == torch.uint8:
            if model.training and augment is not None:
                x = on(augment, x.device)(x)
            else:
                x = on(normalize, x.device)(x)
        logits = model(x)
        return {"loss": classification_loss(logits, batch["label"], label_smoothing), "logits": logits}

    return step


def build_datasets(cfg: PlantIdConfig, index: ImageIndex, bad: BadSampleLog | None, data_cfg: dict[str, Any]
                   ) -> tuple[ImageDataset, ImageDataset]:
    """Train (``cfg.gpu_aug``: uint8 resize only; else the torchvision pipeline) and val datasets; val
    is always the model's evaluation preprocessing (:func:`mlcore.vision.eval_transform` of ``data_cfg``)."""
    if cfg.gpu_aug:
        train_tf = decode_transform(cfg.image_size)
    else:
        train_tf = train_transform(cfg.image_size, **cfg.aug_kwargs(), mean=data_cfg["mean"], std=data_cfg["std"])
    return (ImageDataset(index.samples("train"), train_tf, bad_samples=bad, hint=BAD_IMAGE_HINT),
            ImageDataset(index.samples("val"), eval_transform(data_cfg), bad_samples=bad, hint=BAD_IMAGE_HINT))


def _stage_timing(before: dict[str, Any], after: dict[str, Any], t0: float) -> dict[str, Any]:
    return {"wall_time_s": round(time.perf_counter() - t0, 3),
            "steps": after["steps"] - before.get("steps", 0),
            "epochs": after["epochs"],
            "samples_per_s_cumulative": after["samples_per_s"],
            "data_wait_fraction_cumulative": after["data_wait_fraction"]}


def train(cfg: PlantIdConfig) -> dict[str, Any]:
    """Train with ``cfg``; returns the final summary (also ``summary.json``).

    Raises:
        DataError: no dataset / unreadable dataset files.
        OSError: pretrained weights unavailable (offline hub) or unreadable ``--weights``.
    """
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    index = load_index(cfg.data, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed,
                       test_seed=cfg.test_seed)
    weights_file = cfg.weights if cfg.weights and Path(cfg.weights).is_file() else None
    weights_dir = cfg.weights if cfg.weights and Path(cfg.weights).is_dir() else None
    pretrained = cfg.pretrained and not cfg.resume and weights_file is None
    model = build_model(cfg.model_type, index.num_classes, pretrained=pretrained,
                        weights_dir=None if cfg.resume else weights_dir, image_size=cfg.image_size,
                        head=cfg.head, dropout=cfg.dropout)
    if weights_file is not None and not cfg.resume:
        state = load_checkpoint(weights_file, expect_domain="plantid", flag="--weights").get("model")
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            raise CheckpointError(f"--weights {weights_file}: does not match {cfg.model_type} with "
                                  f"{index.num_classes} classes ({str(exc).splitlines()[0]})") from exc
    data_cfg = resolve_data_config(model, cfg.image_size)  # the weights' own mean/std, interpolation, crop
    bad = BadSampleLog() if cfg.skip_bad_images else None
    train_ds, val_ds = build_datasets(cfg, index, bad, data_cfg)
    workers = cfg.workers()
    log.info("data %s (%s): %d classes, %d train, %d val, %d test; %d loader workers (asked %d), %s augmentation",
             cfg.data, index.layout, index.num_classes, len(train_ds), len(val_ds),
             len(index.splits.get("test", [])), workers, cfg.num_workers,
             "on-device kornia" if cfg.gpu_aug else "torchvision CPU")
    train_loader = make_loader(train_ds, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                               num_workers=workers, drop_last=len(train_ds) > cfg.batch_size)
    val_loader = make_loader(val_ds, batch_size=cfg.batch_size * 2, shuffle=False, seed=cfg.seed, num_workers=workers)

    augment = DeviceAugmentation(cfg.image_size, **cfg.aug_kwargs(), mean=data_cfg["mean"],
                                 std=data_cfg["std"]) if cfg.gpu_aug else None
    metric = ClassificationMetrics(index.num_classes, index.classes)  # + per-class F1 every epoch
    stats = EpochTrainStats(index.num_classes)  # training accuracy/F1, samples/s and memory per epoch
    step = make_step(cfg.label_smoothing, augment, DeviceNormalize(data_cfg["mean"], data_cfg["std"]))
    trainer = ClassifierTrainer(model, cfg, stats.wrap(step), eval_step=step, metrics=[metric], callbacks=[stats],
                                classes=index.classes, labels=index.labels)
    if trainer.logger.enabled:
        write_json_atomic(trainer.run_dir / "label_mapping.json",
                          {"classes": index.classes, "labels": index.labels, "layout": index.layout})
        index.write_split_json(trainer.run_dir / "split.json")

    stages: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    if cfg.frozen_epochs > 0:
        freeze_backbone(model, True)
        t0 = time.perf_counter()
        stage1 = with_overrides(cfg, epochs=cfg.frozen_epochs, lr=cfg.frozen_lr, warmup_epochs=0.0, warmup_steps=0)
        summary = trainer.fit(train_loader, val_loader, stage="frozen", config=stage1)
        stages["frozen"] = {**_stage_timing({}, summary, t0), "trainable_params": param_count(model, True)}
    freeze_backbone(model, False, cfg.trainable_stages)
    if cfg.epochs > cfg.frozen_epochs and (summary.get("completed", True)):
        t0, before = time.perf_counter(), dict(summary)
        stage2 = with_overrides(cfg, epochs=cfg.epochs - cfg.frozen_epochs,
                                profile=cfg.profile and cfg.frozen_epochs == 0)  # profile the first stage only
        summary = trainer.fit(train_loader, val_loader, stage="finetune", config=stage2)
        stages["finetune"] = {**_stage_timing(before, summary, t0), "trainable_params": param_count(model, True)}
    summary["bad_images"] = bad.paths() if bad is not None else []
    if trainer.logger.enabled and int(metric.confusion.sum()) > 0:  # the last validation pass
        confusion_png(metric.confusion.cpu().numpy(), index.labels, trainer.run_dir / "val_confusion_matrix.png")
    trainer.logger.write_summary(summary)
    if trainer.logger.enabled:
        write_json_atomic(trainer.run_dir / "training_config.json", {
            "parameters": cfg.to_dict(),
            "effective_batch": summary.get("effective_batch"),
            "micro_batch": summary.get("micro_batch"),
            "accum_steps": summary.get("accum_steps"),
            "num_workers_used": workers,
            "cpu_count": os.cpu_count(),
            "device": summary.get("device"),
            "precision": summary.get("precision"),
            "dataset": {"root": str(index.root), "layout": index.layout, "classes": index.num_classes,
                        "train": len(train_ds), "val": len(val_ds), "test": len(index.splits.get("test", []))},
            "model": {"type": cfg.model_type, "params": param_count(model), "image_size": cfg.image_size},
            "timings": {"wall_time_s": round(time.perf_counter() - t_start, 3),
                        "train_time_s": summary.get("train_time_s"),
                        "samples_per_s": summary.get("samples_per_s"),
                        "data_wait_fraction": summary.get("data_wait_fraction"),
                        "stages": stages},
            "best": summary.get("best"), "final": summary.get("final"),
            "bad_images": summary["bad_images"],
        })
    trainer.close()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``plantid-train`` (exit 0 ok, 2 bad flags, 1 bad data or weights unavailable)."""
    return train_main(PlantIdConfig, train, argv, prog="plantid-train", presets_package="plantid",
                      description="Fine-tune a plant classifier (DINOv2 or EfficientNet-Lite0) with mlcore.",
                      summary_keys=("best", "final", "steps", "epochs", "completed_stages", "samples_per_s",
                                    "data_wait_fraction", "wall_time_s"),
                      user_errors=(DataError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())

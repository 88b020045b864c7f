"""``foodrec-train``: Food-101 classification on mlcore, one stage or two (frozen backbone, then all).

Both stages run in one command into one run directory, as two ``Trainer.fit`` stages; an
interrupted stage 2 resumes where it stopped (``--resume RUN_DIR``) and stage 1 is not repeated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from foodrec.config import FoodRecConfig
from foodrec.data import train_transform
from foodrec.losses import CombinedClassificationLoss, make_mixup
from foodrec.metrics import ClassificationMetrics
from foodrec.models import build_model, freeze_backbone
from mlcore import BadSampleLog, make_loader
from mlcore.checkpoint import load_model_weights
from mlcore.cli import train_main
from mlcore.runlog import write_json_atomic
from mlcore.seed import seed_everything
from mlcore.trainer import with_overrides
from mlcore.vision import (
    BAD_IMAGE_HINT,
    ClassifierTrainer,
    DataError,
    EpochTrainStats,
    ImageDataset,
    capped_workers,
    eval_transform,
    load_index,
    resolve_data_config,
)

log = logging.getLogger("foodrec.train")

SEED_CHECKPOINT_NAMES = {
    "last.pt": "last_checkpoint.pt",
    "best_val_top1.pt": "best_accuracy.pt",
    "best_val_f1.pt": "best_f1.pt",
}
"""The seed's checkpoint file names, kept as hard links beside mlcore's (``last.pt``, ``best_<metric>.pt``)."""


def make_step(loss_fn: CombinedClassificationLoss, mixup: Any | None):
    """``step(model, batch) -> {"loss", "ce", "focal", "logits"}``; mixes training batches when ``mixup.enabled``.

    ``mixup`` is a ``timm.data.Mixup`` (its ``mixup_enabled`` flag switches it per stage). timm mixes the
    images **in place**, so the step mixes a copy: the batch stays as loaded, and a second call on it (the
    trainer's out-of-memory retry) mixes the original images again rather than already-mixed ones. An odd
    micro-batch (e.g. after an OOM split) is not mixed, since batch mixing pairs samples.
    """

    def step(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch["image"], batch["label"]
        if mixup is not None and mixup.mixup_enabled and model.training and x.shape[0] % 2 == 0:
            x, y = mixup(x.clone(), y)
        logits = model(x)
        return {**loss_fn.parts(logits.float(), y), "logits": logits}

    return step


def train(cfg: FoodRecConfig) -> dict[str, Any]:
    """Train with ``cfg``; returns the last stage's summary (``summary.json``)."""
    seed_everything(cfg.seed)
    index = load_index(cfg.data, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed,
                       test_seed=cfg.test_seed)
    # resume: every weight comes from last.pt; --weights: from that file (no hub download)
    pretrained = None if (cfg.resume or cfg.weights) else cfg.backbone_init()
    model = build_model(cfg.backbone, num_classes=len(index.classes), pretrained=pretrained)
    if cfg.weights and not cfg.resume:
        load_model_weights(model, cfg.weights, expect_domain="foodrec", flag="--weights")
        log.info("initialised from --weights %s", cfg.weights)
    data_cfg = resolve_data_config(model, cfg.image_size)  # the weights' own mean/std, interpolation, crop
    # one record of skipped images for both splits and every loader worker
    bad_log = BadSampleLog() if cfg.skip_bad_images else None
    train_ds = ImageDataset(index.samples("train"), train_transform(cfg.image_size, data_cfg["mean"], data_cfg["std"]),
                            bad_samples=bad_log, hint=BAD_IMAGE_HINT)
    val_ds = ImageDataset(index.samples("val"), eval_transform(data_cfg), bad_samples=bad_log, hint=BAD_IMAGE_HINT)
    workers = capped_workers(cfg.num_workers)
    log.info("data %s (%s): %d classes, %d train, %d val, %d test; %d loader workers (asked %d)", cfg.data,
             index.layout, len(index.classes), len(train_ds), len(val_ds), len(index.splits.get("test", [])),
             workers, cfg.num_workers)
    kw = dict(num_workers=workers, seed=cfg.seed)
    # mixing pairs samples, so training batches are full (drop_last) when mixup is on
    train_loader = make_loader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=cfg.mixup, **kw)
    val_loader = make_loader(val_ds, batch_size=cfg.batch_size, shuffle=False, **kw)

    loss_fn = CombinedClassificationLoss(ce_weight=cfg.ce_weight, focal_weight=cfg.focal_weight,
                                         label_smoothing=cfg.label_smoothing, gamma=cfg.focal_gamma)
    mixup = make_mixup(len(index.classes), mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                       switch_prob=cfg.mixup_switch_prob) if cfg.mixup else None
    stats = EpochTrainStats(len(index.classes), loss_parts=("ce", "focal"))  # the seed's per-epoch training log
    step = make_step(loss_fn, mixup)
    trainer = ClassifierTrainer(model, cfg, stats.wrap(step), eval_step=step, callbacks=[stats],
                                metrics=[ClassificationMetrics(len(index.classes), index.classes)],
                                checkpoint_aliases=SEED_CHECKPOINT_NAMES, classes=index.classes, labels=index.labels)
    if trainer.logger.enabled:
        write_json_atomic(trainer.run_dir / "label_mapping.json",
                          {"classes": index.classes, "labels": index.labels})
        index.write_split_json(trainer.run_dir / "split.json")
    if cfg.two_stage:
        freeze_backbone(model, True)
        if mixup is not None:
            mixup.mixup_enabled = False
        stage1 = with_overrides(cfg, epochs=cfg.stage1_epochs, lr=cfg.stage1_lr, warmup_epochs=0.0)
        summary = trainer.fit(train_loader, val_loader, stage="stage1", config=stage1)
        if "stage1" in trainer.completed_stages:  # stopped inside stage 1 (--max-steps): stage 2 waits for --resume
            freeze_backbone(model, False)
            if mixup is not None:
                mixup.mixup_enabled = True
            summary = trainer.fit(train_loader, val_loader, stage="stage2")
    else:
        summary = trainer.fit(train_loader, val_loader)
    # the seed's final_model.pt: the weights training ended with (EMA if on), the classes and the history
    trainer.save_weights("final_model.pt", extra={"classes": index.classes, "labels": index.labels,
                                                  "history": trainer.history})
    summary["bad_images"] = bad_log.paths() if bad_log is not None else []
    trainer.logger.write_summary(summary)
    trainer.close()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``foodrec-train`` (exit 0 ok, 2 bad flags, 1 bad data or weights unavailable)."""
    return train_main(FoodRecConfig, train, argv, prog="foodrec-train", presets_package="foodrec",
                      description="Train a Food-101 classifier with mlcore.",
                      summary_keys=("best", "steps", "epochs", "completed_stages", "samples_per_s", "wall_time_s"),
                      user_errors=(DataError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())

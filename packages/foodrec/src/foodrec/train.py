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
from foodrec.data import DataError, FoodDataset, eval_transform, load_index, train_transform
from foodrec.losses import CombinedClassificationLoss, make_mixup
from foodrec.metrics import ClassificationMetrics
from foodrec.models import build_model, freeze_backbone
from mlcore import BadSampleLog, Trainer, make_loader
from mlcore.checkpoint import load_model_weights
from mlcore.cli import train_main
from mlcore.runlog import write_json_atomic
from mlcore.seed import seed_everything
from mlcore.trainer import with_overrides

log = logging.getLogger("foodrec.train")

SEED_CHECKPOINT_NAMES = {
    "last.pt": "last_checkpoint.pt",
    "best_val_top1.pt": "best_accuracy.pt",
    "best_val_f1.pt": "best_f1.pt",
}
"""The seed's checkpoint file names, kept as hard links beside mlcore's (``last.pt``, ``best_<metric>.pt``)."""


def make_step(loss_fn: torch.nn.Module, mixup: Any | None):
    """``step(model, batch) -> {"loss", "logits"}``; mixes training batches when ``mixup.enabled``.

    ``mixup`` is a ``timm.data.Mixup`` (its ``mixup_enabled`` flag switches it per stage); an odd
    micro-batch (e.g. after an OOM split) is not mixed, since batch mixing pairs samples.
    """

    def step(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch["image"], batch["label"]
        if mixup is not None and mixup.mixup_enabled and model.training and x.shape[0] % 2 == 0:
            x, y = mixup(x, y)
        logits = model(x)
        return {"loss": loss_fn(logits.float(), y), "logits": logits}

    return step


def train(cfg: FoodRecConfig) -> dict[str, Any]:
    """Train with ``cfg``; returns the last stage's summary (``summary.json``)."""
    seed_everything(cfg.seed)
    index = load_index(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    bad_log = BadSampleLog()  # one record of skipped images for both splits and every loader worker
    train_ds = FoodDataset(index.samples("train"), train_transform(cfg.image_size),
                           skip_bad_images=cfg.skip_bad_images, bad_log=bad_log)
    val_ds = FoodDataset(index.samples("val"), eval_transform(cfg.image_size),
                         skip_bad_images=cfg.skip_bad_images, bad_log=bad_log)
    log.info("data %s: %d classes, %d train, %d val", cfg.data, len(index.classes), len(train_ds), len(val_ds))
    kw = dict(num_workers=cfg.num_workers, seed=cfg.seed)
    # mixing pairs samples, so training batches are full (drop_last) when mixup is on
    train_loader = make_loader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=cfg.mixup, **kw)
    val_loader = make_loader(val_ds, batch_size=cfg.batch_size, shuffle=False, **kw)

    # resume: every weight comes from last.pt; --weights: from that file (no hub download)
    pretrained = None if (cfg.resume or cfg.weights) else cfg.backbone_init()
    model = build_model(cfg.backbone, num_classes=len(index.classes), pretrained=pretrained)
    if cfg.weights and not cfg.resume:
        load_model_weights(model, cfg.weights, expect_domain="foodrec", flag="--weights")
        log.info("initialised from --weights %s", cfg.weights)
    loss_fn = CombinedClassificationLoss(ce_weight=cfg.ce_weight, focal_weight=cfg.focal_weight,
                                         label_smoothing=cfg.label_smoothing, gamma=cfg.focal_gamma)
    mixup = make_mixup(len(index.classes), mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                       switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.label_smoothing) if cfg.mixup else None
    trainer = Trainer(model, cfg, make_step(loss_fn, mixup), metrics=[ClassificationMetrics(len(index.classes), index.classes)],
                      checkpoint_aliases=SEED_CHECKPOINT_NAMES)
    if trainer.logger.enabled:
        write_json_atomic(trainer.run_dir / "label_mapping.json",
                          {"classes": index.classes, "labels": index.labels})
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
    summary["bad_images"] = bad_log.paths()
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

"""A tiny ``<domain>-train`` built with mlcore.cli.train_main, for the stop-signal tests.

Usage: python signal_script.py [train flags ...]   (also under torchrun)
Environment: ``TOY_SIGNALS="SIGINT@5"`` sends SIGINT to this process during the 5th training
micro-batch (several comma-separated items are sent in order; ``SIGTERM@5@rank1`` only on rank 1;
``SIGTERM@eval2`` during the 2nd evaluation batch). ``TOY_FREEZE_STAGE=1`` trains a frozen-features
stage (``--epochs`` 1) before the main stage. On a stop, every rank writes ``stopped_rank<R>.json``
(its optimizer step) into ``--out``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from mlcore import TrainConfig, Trainer, make_loader
from mlcore.cli import train_main
from mlcore.testing import Accuracy, NoisyBlobs, TinyCNN, classification_step
from mlcore.trainer import TrainingInterrupted, with_overrides


def _plan() -> dict[str, list[int]]:
    rank = os.environ.get("RANK", "0")
    plan: dict[str, list[int]] = {"train": [], "eval": []}
    for item in filter(None, os.environ.get("TOY_SIGNALS", "").split(",")):
        name, at, *only = item.split("@")
        if only and only[0] != f"rank{rank}":
            continue
        kind = "eval" if at.startswith("eval") else "train"
        plan[kind].append((int(at.removeprefix("eval")), getattr(signal, name)))
    return plan


def train(cfg: TrainConfig) -> dict:
    plan, calls = _plan(), {"train": 0, "eval": 0}

    def step(model, batch):
        kind = "train" if model.training else "eval"
        calls[kind] += 1
        for at, sig in plan[kind]:
            if at == calls[kind]:
                os.kill(os.getpid(), sig)
        return classification_step(model, batch)

    import torch

    torch.manual_seed(0)
    model = TinyCNN()
    train_loader = make_loader(NoisyBlobs(40), batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                               num_workers=cfg.num_workers)
    val_loader = make_loader(NoisyBlobs(16, augment=False, seed=1), batch_size=4, shuffle=False)
    trainer = Trainer(model, cfg, step, metrics=[Accuracy()])
    try:
        if os.environ.get("TOY_FREEZE_STAGE"):
            for p in model.features.parameters():
                p.requires_grad_(False)
            trainer.fit(train_loader, val_loader, stage="frozen", config=with_overrides(cfg, epochs=1))
            for p in model.features.parameters():
                p.requires_grad_(True)
            if "frozen" not in trainer.completed_stages:
                return trainer._summary(cfg, completed=False)
        summary = trainer.fit(train_loader, val_loader, stage="main")
    except TrainingInterrupted as exc:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        Path(cfg.out, f"stopped_rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"step": exc.step}))
        raise
    trainer.close()
    return summary


def main(argv=None) -> int:
    return train_main(TrainConfig, train, argv, prog="toy-train", presets_package=None, description="toy",
                      summary_keys=("steps", "completed", "completed_stages"))


if __name__ == "__main__":
    sys.exit(main())

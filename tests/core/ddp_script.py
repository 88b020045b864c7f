"""Trains a small MLP with mlcore; run under torchrun (DDP, gloo) or as one process.

Usage: python ddp_script.py OUT_FILE BATCH_SIZE ACCUM_STEPS RUN_DIR [two_stage]
Rank 0 writes the final parameters to OUT_FILE. ``two_stage``: a frozen-first-layer stage (1 epoch,
lr 0.1), then the whole model (freeze then finetune, as foodrec and plantid do).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from mlcore import TrainConfig, Trainer, make_loader
from mlcore.distributed import destroy_distributed, is_main_process
from mlcore.testing import Accuracy  # noqa: F401  (import check under torchrun)
from mlcore.trainer import with_overrides


class Pairs(TensorDataset):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return {"x": x, "y": y}


def main() -> None:
    out, batch, accum, run_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, 1, generator=g)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    cfg = TrainConfig(out=run_dir, epochs=2, batch_size=batch, accum_steps=accum, lr=0.05, optimizer="adamw",
                      warmup_steps=2, num_workers=0, device="cpu", clip_grad_norm=None)
    # loaders first, as domain packages do: make_loader must see torchrun's ranks before the trainer
    # initialises the process group
    loader = make_loader(Pairs(x, y), batch_size=batch, shuffle=True, seed=0)
    val = make_loader(Pairs(x[:63], y[:63]), batch_size=batch, shuffle=False)  # odd size: no padding
    trainer = Trainer(model, cfg, lambda m, b: F.mse_loss(m(b["x"]), b["y"]))
    allreduces = {"n": 0}
    if hasattr(trainer.model, "register_comm_hook"):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        def counting_hook(state, bucket):
            allreduces["n"] += 1
            return default_hooks.allreduce_hook(None, bucket)

        trainer.model.register_comm_hook(None, counting_hook)
    if len(sys.argv) > 5 and sys.argv[5] == "two_stage":
        first = list(model[0].parameters())
        for p in first:
            p.requires_grad_(False)
        trainer.fit(loader, val, stage="frozen", config=with_overrides(cfg, epochs=1, lr=0.1))
        for p in first:
            p.requires_grad_(True)
        summary = trainer.fit(loader, val, stage="finetune")
        assert summary["completed_stages"] == ["frozen", "finetune"]
    else:
        summary = trainer.fit(loader, val)
    if is_main_process():
        torch.save({"params": {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()},
                    "summary_world": summary["world_size"], "val_loss": summary["final"]["loss"],
                    "allreduces": allreduces["n"], "steps": summary["steps"]}, out)
    trainer.close()
    destroy_distributed()


if __name__ == "__main__":
    main()

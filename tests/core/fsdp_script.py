"""Trains a small residual MLP with mlcore under torchrun (--strategy fsdp or ddp, gloo) or as one process.

Usage: python fsdp_script.py DUMP RUN_DIR STRATEGY BATCH MAX_STEPS [--resume] [--meta] [--gc] [--keep]
(or ``main([...])`` in-process for one process).

The model marks its blocks (``block_classes``); ``--meta`` builds it on the meta device, ``--gc``
turns on activation checkpointing, ``--keep`` ``--keep-last 1``. Every rank takes part in gathering the full weights and the
optimizer state (keyed by parameter name); rank 0 writes them with the step count to DUMP.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
from torch.utils.data import TensorDataset

from mlcore import TrainConfig, Trainer, make_loader
from mlcore.distributed import destroy_distributed, is_main_process
from mlcore.fsdp import gather_full_state_dict
from mlcore.optim import build_optimizer


class Pairs(TensorDataset):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return {"x": x, "y": y}


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + torch.tanh(self.fc(self.norm(x)))


class Net(nn.Module):
    block_classes = (Block,)

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.blocks = nn.Sequential(Block(16), Block(16))
        self.head = nn.Linear(16, 1)  # weight (1, 16): rank 1's FSDP shard is empty

    def forward(self, x):
        return self.head(self.blocks(self.inp(x)))


def main(argv: list[str]) -> None:
    argv = [str(a) for a in argv]
    dump, run_dir, strategy, batch, max_steps = argv[:5]
    flags = set(argv[5:])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, 1, generator=g)
    cfg = TrainConfig(out=run_dir, epochs=2, batch_size=int(batch), accum_steps=2, lr=0.05, warmup_steps=2,
                      num_workers=0, device="cpu", clip_grad_norm=1.0, max_steps=int(max_steps), eval_every_steps=3,
                      strategy=strategy, grad_checkpointing="--gc" in flags,
                      resume=run_dir if "--resume" in flags else None, keep_last=1 if "--keep" in flags else 0)
    loader = make_loader(Pairs(x, y), batch_size=cfg.batch_size, shuffle=True, seed=0)
    val = make_loader(Pairs(x[:25], y[:25]), batch_size=cfg.batch_size, shuffle=False)  # FSDP ranks: 4 + 3 batches
    torch.manual_seed(1)
    if "--meta" in flags:
        with torch.device("meta"):
            model = Net()
    else:
        model = Net()
    optimizers = []

    def factory(m):
        optimizers.append(build_optimizer(m, cfg))
        return optimizers[-1]

    trainer = Trainer(model, cfg, lambda m, b: F.mse_loss(m(b["x"]), b["y"]), optimizer_factory=factory)
    summary = trainer.fit(loader, val)
    weights = gather_full_state_dict(trainer.raw_model)
    optim = get_optimizer_state_dict(trainer.raw_model, optimizers[-1],
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_main_process():
        torch.save({"model": weights, "optimizer": optim, "steps": summary["steps"],
                    "world": summary["world_size"], "sharded": trainer.sharded,
                    "val_loss": summary["final"]["loss"] if summary["final"] else None}, dump)
    trainer.close()
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])

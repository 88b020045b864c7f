"""A small DDP (gloo) run for the out-of-memory and resume tests; under torchrun or as one process.

Usage: python oom_script.py OUT_FILE RUN_DIR BATCH_SIZE [oom=1,9] [epochs=N] [max_steps=N] [resume]
``oom``: the forward calls of rank 1 that raise ``torch.OutOfMemoryError`` inside the model (which has a
buffer, so DDP broadcasts buffers at forwards). ``resume`` continues RUN_DIR. Rank 0 writes the final
parameters, the OOM back-offs, the micro-batch and the step count to OUT_FILE.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from mlcore import TrainConfig, Trainer, make_loader
from mlcore.distributed import destroy_distributed, is_main_process


class Pairs(TensorDataset):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return {"x": x, "y": y}


class Net(nn.Module):
    def __init__(self, fail_at: set[int]) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
        self.register_buffer("forwards", torch.zeros(()))  # a buffer: DDP broadcasts buffers at forwards
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls in self.fail_at:
                raise torch.OutOfMemoryError("simulated out of memory on rank 1")
            self.forwards += 1
        return self.body(x)


def main() -> None:
    out, run_dir, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    opts = dict(a.split("=", 1) if "=" in a else (a, "1") for a in sys.argv[4:])
    fail_at = {int(c) for c in opts["oom"].split(",")} if "oom" in opts else set()
    rank = int(os.environ.get("RANK", "0"))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 6, generator=g), torch.randn(32, 1, generator=g)
    torch.manual_seed(1)
    model = Net(fail_at if rank == 1 else set())
    cfg = TrainConfig(out=run_dir, epochs=int(opts.get("epochs", 1)), batch_size=batch, accum_steps=2, lr=0.05,
                      optimizer="adamw", num_workers=0, device="cpu", clip_grad_norm=None,
                      max_steps=int(opts["max_steps"]) if "max_steps" in opts else None,
                      resume=run_dir if "resume" in opts else None)
    loader = make_loader(Pairs(x, y), batch_size=batch, shuffle=True, seed=0)
    trainer = Trainer(model, cfg, lambda m, b: F.mse_loss(m(b["x"]), b["y"]))
    summary = trainer.fit(loader)
    if is_main_process():
        torch.save({"params": {k: v.detach().clone() for k, v in trainer.raw_model.body.state_dict().items()},
                    "backoffs": summary["oom_backoffs"], "micro_batch": summary["micro_batch"],
                    "steps": summary["steps"]}, out)
    trainer.close()
    destroy_distributed()


if __name__ == "__main__":
    main()

"""Trainer overhead: mlcore.Trainer vs a plain hand-written PyTorch loop, same work.

Both train the same small CNN (mlcore.testing.TinyCNN, width 32) on the same in-memory data
(3x32x32, 4 classes) with the same AdamW optimizer for the same number of steps on the CPU.
Each repeat runs the three variants in a shuffled order; each repeat gives a paired ratio
against the plain run next to it, and the median of those ratios is printed (pairing cancels the
slow drift of a shared VM's speed).

- ``trainer``: Trainer.fit on the same plain DataLoader (the loop's own cost: accumulation
  bookkeeping, scheduler, clipping off, logging, the end-of-epoch last.pt checkpoint).
- ``trainer+make_loader``: Trainer.fit on mlcore.make_loader (adds the per-sample re-seeding that
  makes mid-epoch resume exact).

Usage: uv run python bench/trainer_overhead.py [--steps 150] [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mlcore import TrainConfig, Trainer, make_loader
from mlcore.testing import TinyCNN


class Images(Dataset):
    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def step(model, batch):
    return F.cross_entropy(model(batch["image"]), batch["label"])


def plain(ds, steps, bs) -> float:
    torch.manual_seed(0)
    model = TinyCNN(width=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(ds, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    model.train()
    for batch in loader:
        opt.zero_grad(set_to_none=True)
        loss = step(model, batch)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def trainer(ds, steps, bs, resumable: bool) -> float:
    torch.manual_seed(0)
    model = TinyCNN(width=32)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(out=out, epochs=1, batch_size=bs, lr=1e-3, weight_decay=0.0, clip_grad_norm=None,
                          num_workers=0, device="cpu", log_every_steps=10**9)
        tr = Trainer(model, cfg, step,
                     optimizer_factory=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3))
        loader = (make_loader(ds, batch_size=bs, shuffle=True, seed=0) if resumable else
                  DataLoader(ds, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(0)))
        t = time.perf_counter()
        tr.fit(loader)
        elapsed = time.perf_counter() - t
        tr.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    logging.disable(logging.INFO)
    ds = Images(args.steps * args.batch_size)
    plain(ds, args.steps, args.batch_size)  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"plain": [], "trainer": [], "trainer+make_loader": []}
    runs = {
        "plain": lambda: plain(ds, args.steps, args.batch_size),
        "trainer": lambda: trainer(ds, args.steps, args.batch_size, resumable=False),
        "trainer+make_loader": lambda: trainer(ds, args.steps, args.batch_size, resumable=True),
    }
    order = random.Random(0)
    for _ in range(args.repeats):
        names = list(runs)
        order.shuffle(names)  # no variant always runs first (or right after another)
        for name in names:
            times[name].append(runs[name]())
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: statistics.median(t / p for t, p in zip(times[k], times["plain"], strict=True))
             for k in ("trainer", "trainer+make_loader")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x batch "
          f"{args.batch_size}, {args.repeats} repeats in shuffled order")
    for k, v in med.items():
        print(f"{k:>22}: median {v * 1000:8.1f} ms  ({v / args.steps * 1000:.2f} ms/step)")
    print(f"ratio Trainer/plain (median of paired ratios): {ratio['trainer']:.3f}")
    print(f"ratio Trainer+make_loader/plain (median of paired ratios): {ratio['trainer+make_loader']:.3f}")


if __name__ == "__main__":
    main()

"""CPU training speed: fp32 vs bf16 autocast + channels-last, and alone vs next to a second job (issue 17).

Two models, one training step each (forward, loss, backward, AdamW step) on fixed random batches:

- hair: hairseg's U-Net on the tf_efficientnet_lite0 encoder (``--encoder efficientnet-lite0``), 1 x
  ``--hair-size`` px, batch ``--hair-batch``;
- food: foodrec's classifier on tf_efficientnet_lite0, 15 classes, ``--food-size`` px, batch ``--food-batch``.

1. Precision: rounds alternate fp32 and "bf16" (bf16 autocast, fp32 master weights, channels-last:
   what ``--precision auto`` picks on a CPU with native bf16 once ``mlcore.devices.CPU_AUTO_BF16`` is
   on), ``--rounds`` rounds of ``--steps`` timed steps after one warm-up step; the ratio is the median
   over rounds of bf16 samples/s / fp32 samples/s, per model, and ``bf16_speedup`` their geometric mean.
2. Contention: hair fp32 samples/s alone, then while a second process runs the same hair training
   loop (equal priority, same environment: mlcore's ``OMP_WAIT_POLICY=PASSIVE`` unless you set it);
   ``contended_ratio`` = contended / alone (a fair share of 2 jobs is 0.5).

The last line is JSON: ``{"bf16_speedup": x, "contended_ratio": y, ...}``.

    uv run python bench/cpu_precision.py [--rounds 3 --steps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

import mlcore  # noqa: F401  (OpenMP environment before torch starts)
from mlcore.devices import cpu_native_bf16


def make_model(kind: str) -> torch.nn.Module:
    """The hair U-Net or the food classifier (tf_efficientnet_lite0, random init: speed only)."""
    if kind == "hair":
        from hairseg.models import build_model
        return build_model("efficientnet-lite0", None)
    from foodrec.models import build_model
    return build_model("efficientnet_lite0", num_classes=15, pretrained=None)


def make_step(kind: str, model: torch.nn.Module, batch: int, size: int, bf16: bool):
    """A closure running one optimizer step; returns samples per call."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    if kind == "hair":
        y = (torch.rand(batch, 1, size, size) > 0.5).float()
        loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    else:
        y = torch.randint(0, 15, (batch,))
        loss_fn = torch.nn.functional.cross_entropy
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> int:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return batch

    return step


def samples_per_s(step, steps: int) -> float:
    step()  # warm-up (oneDNN primitive creation, autocast weight casts)
    step()
    t0 = time.perf_counter()
    n = sum(step() for _ in range(steps))
    return n / (time.perf_counter() - t0)


def precision_ratio(kind: str, batch: int, size: int, rounds: int, steps: int) -> dict:
    steps_fp32 = make_step(kind, make_model(kind), batch, size, bf16=False)
    steps_bf16 = make_step(kind, make_model(kind), batch, size, bf16=True)
    fp32, bf16 = [], []
    for r in range(rounds):  # interleaved, order alternating, so drift hits both
        order = [("fp32", steps_fp32), ("bf16", steps_bf16)][:: 1 if r % 2 == 0 else -1]
        for name, fn in order:
            (fp32 if name == "fp32" else bf16).append(samples_per_s(fn, steps))
    ratios = [b / f for b, f in zip(bf16, fp32, strict=True)]
    return {"fp32_samples_s": statistics.median(fp32), "bf16_samples_s": statistics.median(bf16),
            "ratio": statistics.median(ratios)}


def contended(batch: int, size: int, steps: int, rounds: int) -> dict:
    fn = make_step("hair", make_model("hair"), batch, size, bf16=False)
    alone = statistics.median(samples_per_s(fn, steps) for _ in range(rounds))
    child = subprocess.Popen([sys.executable, __file__, "--_busy", str(batch), str(size)],
                             stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # "ready": the second job is training
        busy = statistics.median(samples_per_s(fn, steps) for _ in range(rounds))
    finally:
        child.terminate()
        child.wait(timeout=60)
    return {"alone_samples_s": alone, "contended_samples_s": busy, "ratio": busy / alone}


def _busy(batch: int, size: int) -> None:
    fn = make_step("hair", make_model("hair"), batch, size, bf16=False)
    fn()
    print("ready", flush=True)
    while True:
        fn()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--hair-size", type=int, default=256)
    p.add_argument("--hair-batch", type=int, default=4)
    p.add_argument("--food-size", type=int, default=224)
    p.add_argument("--food-batch", type=int, default=8)
    p.add_argument("--_busy", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._busy:
        _busy(*args._busy)
        return
    env = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    print(f"cpu native bf16: {cpu_native_bf16()}, torch threads {torch.get_num_threads()}, env {env}, "
          f"load {os.getloadavg()[0]:.1f}")
    hair = precision_ratio("hair", args.hair_batch, args.hair_size, args.rounds, args.steps)
    print("hair", json.dumps({k: round(v, 3) for k, v in hair.items()}))
    food = precision_ratio("food", args.food_batch, args.food_size, args.rounds, args.steps)
    print("food", json.dumps({k: round(v, 3) for k, v in food.items()}))
    cont = contended(args.hair_batch, args.hair_size, args.steps, args.rounds)
    print("contention", json.dumps({k: round(v, 3) for k, v in cont.items()}))
    print(json.dumps({"bf16_speedup": round(math.sqrt(hair["ratio"] * food["ratio"]), 3),
                      "contended_ratio": round(cont["ratio"], 3), "hair_bf16": round(hair["ratio"], 3),
                      "food_bf16": round(food["ratio"], 3), "load": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()

"""mlcore on a real CUDA device: precision modes, channels_last, torch.compile, OOM back-off, overhead.

Each part trains a timm ResNet-50 (random init, 100 classes, 224 px) with :class:`mlcore.Trainer` on
random images held in host memory (a DataLoader with pinned memory, as the domains use) and prints
one JSON line per part; the last line is one JSON object with every figure.

- ``precision``: samples/s in steady state (steps ``--warmup`` .. ``--steps``, timed between two
  ``torch.cuda.synchronize`` calls) for fp32, fp16 (GradScaler), bf16, bf16 + channels_last and
  bf16 + channels_last + ``torch.compile``; loss finite; the ``auto`` choice on this device.
- ``overhead``: the same bf16 work in a plain hand-written PyTorch loop (autocast, AdamW, no
  clipping) vs Trainer with clipping off and no EMA: the ratio Trainer/plain in time per step.
- ``oom``: a real ``torch.OutOfMemoryError`` (the allocator capped with
  ``torch.cuda.set_per_process_memory_fraction``) at micro-batch ``--oom-batch``; the Trainer must
  back off (smaller micro-batches, same effective batch) and finish every update with finite loss.

    uv run python bench/gpu_check.py --device cuda             # on a GPU machine
    uv run python bench/gpu_check.py --device cpu --quick      # a dry run of the code paths

Without CUDA and ``--device cuda`` it prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mlcore import TrainConfig, Trainer


class RandomImages(Dataset):
    """``n`` fixed random images (3, S, S) float32 and labels in [0, classes)."""

    def __init__(self, n: int, size: int, classes: int = 100):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "label": self.y[i]}


class StepTimer:
    """A training step that also records synchronized timestamps at call ``start`` and call ``stop``."""

    def __init__(self, start: int, stop: int, sync):
        self.calls, self.start, self.stop, self.sync = 0, start, stop, sync
        self.t0 = self.t1 = None
        self.last_loss: torch.Tensor | None = None

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls == self.start:
            self.sync()
            self.t0 = time.perf_counter()
        if self.calls == self.stop:
            self.sync()
            self.t1 = time.perf_counter()
        loss = F.cross_entropy(model(batch["image"]), batch["label"])
        self.last_loss = loss.detach()
        return loss

    def seconds_per_step(self) -> float:
        return (self.t1 - self.t0) / (self.stop - self.start)


def make_model(arch: str):
    import timm

    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, num_classes=100)


def run_trainer(args, ds, *, precision: str, channels_last=False, compile=False, batch_size=None,
                steps=None) -> dict:
    steps = steps or args.steps
    bs = batch_size or args.batch_size
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    timer = StepTimer(args.warmup, steps, sync)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(out=out, epochs=1, max_steps=steps, batch_size=bs, lr=1e-3, clip_grad_norm=None,
                          num_workers=2, device=args.device, precision=precision, channels_last=channels_last,
                          compile=compile, log_every_steps=10**9)
        tr = Trainer(make_model(args.arch), cfg, timer)
        loader = DataLoader(ds, batch_size=bs, shuffle=True, num_workers=2, pin_memory=True, drop_last=True,
                            persistent_workers=False, generator=torch.Generator().manual_seed(0))
        summary = tr.fit(loader)
        tr.close()
    final = summary.get("final") or {}
    row = {"precision": summary.get("precision", precision), "channels_last": channels_last, "compile": compile,
           "steps": summary["steps"], "micro_batch": summary["micro_batch"], "oom_backoffs": summary["oom_backoffs"],
           "peak_memory_mb": summary.get("peak_memory_mb"), "train_loss_finite": None}
    if timer.t1 is not None:
        row["samples_per_s"] = round(bs / timer.seconds_per_step(), 1)
        row["ms_per_step"] = round(1000 * timer.seconds_per_step(), 2)
    row["train_loss_finite"] = bool(torch.isfinite(timer.last_loss).item())
    row["strategy"] = {k: v for k, v in summary.items() if k in ("device", "precision", "amp_dtype", "scaler")}
    del final
    return row


def run_plain(args, ds) -> dict:
    dev = torch.device(args.device)
    model = make_model(args.arch).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=2, pin_memory=True,
                        drop_last=True, generator=torch.Generator().manual_seed(0))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    amp = dev.type == "cuda"
    model.train()
    t0 = t1 = None
    for i, batch in enumerate(loader, start=1):
        if i == args.warmup:
            sync()
            t0 = time.perf_counter()
        if i == args.steps:
            sync()
            t1 = time.perf_counter()
            break
        x = batch["image"].to(dev, non_blocking=True)
        y = batch["label"].to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return {"ms_per_step": round(1000 * (t1 - t0) / (args.steps - args.warmup), 2),
            "samples_per_s": round(args.batch_size * (args.steps - args.warmup) / (t1 - t0), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", default="resnet50", help="timm architecture (random init)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="updates per timed run")
    p.add_argument("--warmup", type=int, default=15, help="updates before the timer starts")
    p.add_argument("--parts", default="precision,overhead,oom")
    p.add_argument("--oom-batch", type=int, default=512, help="micro-batch that must not fit under the cap")
    p.add_argument("--oom-cap-gib", type=float, default=12.0, help="allocator cap for the OOM part (GiB)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a CPU dry run of every code path)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: --device {args.device}: no CUDA device here", file=sys.stderr)
        return 1
    if args.quick:
        args.arch, args.image_size, args.batch_size, args.steps, args.warmup = "resnet18", 32, 8, 6, 2
        args.oom_batch = 8
    logging.disable(logging.INFO)
    parts = set(args.parts.split(","))
    report: dict = {"torch": torch.__version__, "device": args.device, "arch": args.arch,
                    "image_size": args.image_size, "batch_size": args.batch_size}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
        report["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
    ds = RandomImages(args.batch_size * 8, args.image_size)

    def emit(name, row):
        report[name] = row
        print(json.dumps({name: row}), flush=True)

    if "precision" in parts:
        emit("auto", run_trainer(args, ds, precision="auto", steps=args.warmup + 2))
        for name, kw in [("fp32", dict(precision="fp32")), ("fp16", dict(precision="fp16")),
                         ("bf16", dict(precision="bf16")),
                         ("bf16_channels_last", dict(precision="bf16", channels_last=True)),
                         ("bf16_channels_last_compile", dict(precision="bf16", channels_last=True, compile=True))]:
            if args.quick and kw.get("precision") in ("fp16",) and not args.device.startswith("cuda"):
                continue
            try:
                emit(name, run_trainer(args, ds, **kw))
            except Exception as exc:  # report and go on: one broken mode must not hide the others
                emit(name, {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
    if "overhead" in parts:
        plain = run_plain(args, ds)
        ours = run_trainer(args, ds, precision="bf16" if args.device.startswith("cuda") else "fp32")
        emit("overhead", {"plain": plain, "trainer": {k: ours.get(k) for k in ("ms_per_step", "samples_per_s")},
                          "ratio_trainer_over_plain": round(ours["ms_per_step"] / plain["ms_per_step"], 3)})
    if "oom" in parts and args.device.startswith("cuda"):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.oom_cap_gib * 2**30 / total))
        big = RandomImages(args.oom_batch * 3, args.image_size)
        try:
            row = run_trainer(args, big, precision="bf16", batch_size=args.oom_batch, steps=3)
            row["ok"] = row["oom_backoffs"] >= 1 and row["steps"] == 3 and bool(row["train_loss_finite"])
        except Exception as exc:
            row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}", "ok": False}
        torch.cuda.set_per_process_memory_fraction(1.0)
        emit("oom", row)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

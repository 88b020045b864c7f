"""plantid training speed: the seed's baseline -> its optimised configuration, one change per row.

Every row trains the same model on the same data through ``plantid.train.train`` (mlcore's Trainer),
full fine-tuning (no frozen stage), for ``--steps`` optimizer updates of 32 samples each, and changes
ONE thing from the row above (seed 004, ``../shared/seeds/004*``):

1. ``baseline`` (the seed's "before"): micro-batch 32 x 1, 518 px, torchvision augmentation in the
   loader workers (``--no-gpu-aug``), 4 workers;
2. ``microbatch``: + micro-batch 16 x 2 accumulation steps (same effective batch 32);
3. ``kornia``: + uint8 decode+resize in the workers, kornia augmentation on the training device;
4. ``px448``: + 448 px, which is the seed's "after" except for the worker count;
5. ``workers8``: + 8 workers (the seed's "after"). Worker counts are capped at the CPU count as
   ``plantid-train`` does; where 4 and 8 cap to the same number (any machine with <= 4 CPUs) this row
   would repeat row 4, so it is left out and the table says so.

Columns: samples/s, the projected epoch time, the share of training time spent waiting for the
loader (mlcore's summary), the speed-up over the row above (that change's own share) and over the
baseline, and the accuracy reached after the same ``--steps`` updates: val top-1 and macro-F1 from
``plantid-eval --split val`` on the run's ``last.pt`` (raw weights: the EMA is off), and top-1 relative
to the baseline (seed 004 claims the optimised run keeps > 98% of it). With a randomly initialised
DINOv2 that is chance: use ``--config cpu`` (plantid's CPU preset: EfficientNet-Lite0 with its
offline ImageNet weights, the preset's learning rate, warmup, trainable stages and augmentation
strength) and ``--steps 60`` for a meaningful column. The rows alternate over ``--repeats``; ratios
are medians of per-repeat ratios; accuracy is from the first repeat.

``--profile`` explains 32 x 1 vs 16 x 2 at equal image size and augmentation (rows 1 and 2): each is
trained again for 2 + ``--profile-steps`` updates under mlcore's ``StepProfiler`` (torch.profiler, CPU
activities, ``record_shapes``; 1 skipped and 1 warmup update, then the recorded ones) and the
per-operator self CPU times of the main process (``profile/top_ops.json``) are printed in ms per
sample, with the ratio per operator, its share of the total difference, the shapes that carry the
most time, the data-wait share (the DataLoader ``__next__`` label) and the optimizer step (per
update: both variants take one per 32 samples). It also times one forward+backward of the model
alone (fixed tensors, no loader, no optimizer) on one micro-batch of 32 vs two of 16, which isolates
model compute from the loader and the optimizer, with the process CPU time and minor page faults per
sample, then again with glibc's heap kept (``mallopt``), to test whether the allocator returning large
blocks to the kernel (re-faulted and zeroed on every step) is what makes the bigger micro-batch slower.

On a CPU the default model is ``dinov2_tiny`` (random init) and both image sizes are scaled by
``--size-scale`` (default 0.25: 518 -> 126 px, 448 -> 112 px, the nearest multiples of the patch
size 14) so a run takes minutes; on a GPU use ``--model-type dinov2_small --size-scale 1``.

    uv run python bench/plantid_speed.py --steps 20 --repeats 3 --no-eval --profile --profile-steps 5
    uv run python bench/plantid_speed.py --config cpu --steps 60              # Lite0 speed + accuracy
    uv run python bench/plantid_speed.py --device cuda --model-type dinov2_small --size-scale 1 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import logging
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mlcore.cli import parse_config
from mlcore.config import ConfigError
from mlcore.runlog import setup_logging
from mlcore.vision import DataError, capped_workers, load_index
from plantid import eval as plantid_eval
from plantid.config import PlantIdConfig
from plantid.models import MODEL_TYPES, build_model
from plantid.train import train

EFFECTIVE_BATCH = 32
ROWS: dict[str, tuple[str, dict[str, Any]]] = {  # each row changes one thing from the one above
    "baseline": ("seed 'before'", dict(batch_size=32, accum_steps=1, image_size=518, num_workers=4, gpu_aug=False)),
    "microbatch": ("+ 16 x 2 micro-batching", dict(batch_size=16, accum_steps=2, image_size=518, num_workers=4,
                                                    gpu_aug=False)),
    "kornia": ("+ kornia aug on the device", dict(batch_size=16, accum_steps=2, image_size=518, num_workers=4,
                                                   gpu_aug=True)),
    "px448": ("+ 448-equiv px", dict(batch_size=16, accum_steps=2, image_size=448, num_workers=4, gpu_aug=True)),
    "workers8": ("+ 8 workers (seed 'after')", dict(batch_size=16, accum_steps=2, image_size=448, num_workers=8,
                                                     gpu_aug=True)),
}
PROFILED = ("baseline", "microbatch")  # 32 x 1 vs 16 x 2, equal image size and augmentation
DATA_WAIT_PREFIX = "enumerate(DataLoader)"  # torch's record_function label around DataLoader.__next__
OPTIMIZER_PREFIXES = ("Optimizer.step#", "Optimizer.zero_grad#")
STEP_LABEL = "ProfilerStep*"  # key_averages' name for the ProfilerStep#N labels (one per recorded update)


def scaled(size: int, scale: float) -> int:
    """``size * scale`` rounded to a multiple of the DINOv2 patch size 14 (at least 14)."""
    return max(14, round(size * scale / 14) * 14)


# ---------------------------------------------------------------------------------------------- profile tables


def per_sample_ms(rows: Iterable[Mapping[str, Any]], samples: int, key: str = "self_cpu_us") -> dict[str, float]:
    """Self time per operator name in ms per sample: ``sum(row[key] over shapes) / 1000 / samples``
    (``key``: ``self_cpu_us``, or ``self_device_us`` for the GPU kernels of a CUDA run).

    ``rows``: :func:`mlcore.profiling.op_rows` rows (``name``, ``self_cpu_us`` in microseconds summed over
    the recorded steps; one row per name and input shapes). ``samples``: samples trained in the recorded
    steps (updates x effective batch). Returns ``{name: ms/sample}``, largest first.

    Raises:
        ValueError: ``samples < 1``.
    """
    if samples < 1:
        raise ValueError(f"samples: expected >= 1, got {samples}")
    out: dict[str, float] = {}
    for r in rows:
        out[r["name"]] = out.get(r["name"], 0.0) + r[key] / 1000.0 / samples
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def compare_ops(a: Mapping[str, float], b: Mapping[str, float], top: int = 15) -> list[dict[str, Any]]:
    """Per-operator comparison of two :func:`per_sample_ms` tables (``a`` the reference, e.g. 32 x 1).

    Returns the ``top`` operators with the largest time in either table, largest first, then one row
    ``"(all other ops)"`` and one ``"total"``: ``{"name", "a", "b", "ratio": b / a (inf if a == 0 < b,
    nan if both 0), "diff_share": (a - b) / (total_a - total_b)}``: the operator's share of the total
    difference (positive: the operator is cheaper in ``b`` and so contributes to ``b`` being faster when
    ``total_b < total_a``; nan when the totals are equal). The ``a`` / ``b`` columns of all rows but
    ``total`` sum to the totals.
    """
    names = sorted(set(a) | set(b), key=lambda n: -max(a.get(n, 0.0), b.get(n, 0.0)))
    total_a, total_b = sum(a.values()), sum(b.values())
    diff = total_a - total_b

    def row(name: str, va: float, vb: float) -> dict[str, Any]:
        ratio = vb / va if va else (math.inf if vb else math.nan)
        return {"name": name, "a": va, "b": vb, "ratio": ratio, "diff_share": (va - vb) / diff if diff else math.nan}

    rows = [row(n, a.get(n, 0.0), b.get(n, 0.0)) for n in names[:top]]
    rest = names[top:]
    if rest:
        rows.append(row("(all other ops)", sum(a.get(n, 0.0) for n in rest), sum(b.get(n, 0.0) for n in rest)))
    rows.append(row("total", total_a, total_b))
    return rows


def profile_shares(rows: Sequence[Mapping[str, Any]], updates: int) -> dict[str, float]:
    """Wall time, data wait and optimizer cost of a recorded window of ``updates`` optimizer updates.

    ``wall_ms``: the ``ProfilerStep*`` labels' total time (one per update; the sum of all self times when
    they are absent); ``data_wait_share``: time inside the DataLoader ``__next__`` label / ``wall_ms``;
    ``optimizer_ms_per_update``: total time inside ``Optimizer.step#...`` and ``Optimizer.zero_grad#...``
    per update (one per ``EFFECTIVE_BATCH`` samples in both variants, so the same per sample).
    """
    step = [r for r in rows if r["name"] == STEP_LABEL]
    wall_us = sum(r["cpu_total_us"] for r in step) if step else sum(r["self_cpu_us"] for r in rows)
    wait_us = sum(r["cpu_total_us"] for r in rows if r["name"].startswith(DATA_WAIT_PREFIX))
    opt_us = sum(r["cpu_total_us"] for r in rows if r["name"].startswith(OPTIMIZER_PREFIXES))
    return {"wall_ms": wall_us / 1000.0, "data_wait_share": wait_us / wall_us if wall_us else math.nan,
            "optimizer_ms_per_update": opt_us / 1000.0 / max(updates, 1)}


def top_shape(rows: Iterable[Mapping[str, Any]], name: str, key: str = "self_cpu_us") -> tuple[str, float]:
    """``(input_shapes, share)`` of the shape group of operator ``name`` with the most self time
    (``row[key]``) and its share of that operator's time (``("", 0.0)`` if the operator is absent)."""
    mine = [r for r in rows if r["name"] == name]
    total = sum(r[key] for r in mine)
    if not mine or not total:
        return "", 0.0
    best = max(mine, key=lambda r: r[key])
    return best["input_shapes"], best[key] / total


# ---------------------------------------------------------------------------------------------- runs


def make_config(args: argparse.Namespace, out: Path, variant: Mapping[str, Any], **extra: Any) -> PlantIdConfig:
    """The ``plantid-train`` configuration of one run: defaults <- ``--config`` preset <- the bench's fixed
    settings (full fine-tuning, no EMA, ``--steps`` updates) <- the variant (``extra`` for profiling)."""
    argv = ["--config", args.config] if args.config else []
    values: dict[str, Any] = {
        "data": args.data, "out": str(out), "model_type": args.model_type, "pretrained": args.pretrained,
        "frozen_epochs": 0, "epochs": args.epochs, "max_steps": args.steps, "device": args.device, "seed": 0,
        "log_every_steps": 1000, "ema_decay": None, "checkpoint_every_steps": None, "save_top_k": 1,
        **({} if args.config else {"lr": 1e-4, "warmup_epochs": 0.0}),
        **variant, "image_size": scaled(variant["image_size"], args.size_scale), **extra}
    for key, value in values.items():
        name = key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{name}" if value else f"--no-{name}")
        else:
            argv += [f"--{name}", "none" if value is None else str(value)]
    return parse_config(PlantIdConfig, argv, prog="plantid_speed", presets_package="plantid")


def evaluate_val(run_dir: Path, args: argparse.Namespace, workers: int) -> dict[str, float]:
    """``plantid-eval --checkpoint RUN/checkpoints/last.pt --split val``: ``{"top1", "f1"}`` (macro-F1).

    Raises:
        RuntimeError: plantid-eval failed (its stderr line is in the message).
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = plantid_eval.main(["--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--data", args.data,
                                  "--split", "val", "--num-workers", str(workers), "--device", args.device])
    if code != 0:
        raise RuntimeError(f"plantid-eval of {run_dir}: exit {code}: {err.getvalue().strip()[-500:]}")
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    return {"top1": result["top1"], "f1": result["f1"]}


def measure(name: str, args: argparse.Namespace, out_root: Path, evaluate: bool) -> dict[str, Any]:
    """Train one row for ``--steps`` updates; samples/s etc. from mlcore's summary (+ val metrics)."""
    cfg = make_config(args, out_root / name, ROWS[name][1])
    summary = train(cfg)
    result = {"samples_per_s": summary["samples_per_s"], "data_wait_fraction": summary["data_wait_fraction"],
              "train_time_s": summary["train_time_s"], "steps": summary["steps"],
              "image_size": cfg.image_size, "workers": cfg.workers(), "micro_batch": cfg.batch_size,
              "accum_steps": cfg.accum_steps, "gpu_aug": cfg.gpu_aug}
    if evaluate:
        result.update({f"val_{k}": v for k, v in evaluate_val(out_root / name, args, cfg.workers()).items()})
    return result


def profile_variant(name: str, args: argparse.Namespace, out_root: Path) -> dict[str, Any]:
    """Train row ``name`` for 2 + ``--profile-steps`` updates under mlcore's StepProfiler; its op rows."""
    k = args.profile_steps
    cfg = make_config(args, out_root / f"profile_{name}", ROWS[name][1], profile=True, profile_steps=k,
                      max_steps=2 + k)
    with contextlib.redirect_stdout(io.StringIO()):  # StepProfiler prints its own table
        summary = train(cfg)
    data = json.loads((out_root / f"profile_{name}" / "profile" / "top_ops.json").read_text())
    return {"rows": data["ops"], "updates": data["profiled_steps"], "samples": data["profiled_steps"] * EFFECTIVE_BATCH,
            "micro_batch": cfg.batch_size, "accum_steps": cfg.accum_steps, "image_size": cfg.image_size,
            "device": args.device,
            "summary_data_wait_fraction": summary["data_wait_fraction"]}


def model_alone(args: argparse.Namespace, num_classes: int, image_size: int, reps: int) -> dict[str, Any]:
    """One forward+backward of the model alone on fixed tensors: one micro-batch of 32 vs two of 16
    (losses weighted 1/2, gradients accumulated), no loader and no optimizer; the two alternate ``reps``
    times after one warm-up each. Per variant (medians): wall ms/sample, process CPU ms/sample (all
    threads: CPU / wall above 1 is intra-op parallelism) and minor page faults per sample of this
    process (fresh pages from the kernel: glibc serves large blocks with mmap and gives them back on
    free, so each such tensor is faulted in and zeroed again). On Linux/glibc the timing is repeated
    after ``mallopt(M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=1 GiB)`` (freed blocks stay in the heap),
    which tests that allocator explanation; this changes the process for good, so it runs last.
    """
    torch.manual_seed(0)
    model = build_model(args.model_type, num_classes, pretrained=False, image_size=image_size).to(args.device)
    model.train()
    x = torch.randn(EFFECTIVE_BATCH, 3, image_size, image_size, device=args.device)
    y = torch.randint(0, num_classes, (EFFECTIVE_BATCH,), device=args.device)

    def run(chunks: int) -> tuple[float, float, float]:
        model.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        f0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time(), time.perf_counter()
        for xs, ys in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
            (torch.nn.functional.cross_entropy(model(xs), ys) / chunks).backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        return wall * 1000.0 / EFFECTIVE_BATCH, cpu * 1000.0 / EFFECTIVE_BATCH, faults / EFFECTIVE_BATCH

    def timed() -> dict[str, float]:
        run(1), run(2)
        one, two = [], []
        for _ in range(reps):
            one.append(run(1))
            two.append(run(2))
        out = {}
        for tag, runs in (("32x1", one), ("16x2", two)):
            out[f"ms_per_sample_{tag}"] = statistics.median(r[0] for r in runs)
            out[f"cpu_ms_per_sample_{tag}"] = statistics.median(r[1] for r in runs)
            out[f"page_faults_per_sample_{tag}"] = statistics.median(r[2] for r in runs)
        out["speedup_16x2"] = statistics.median(o[0] / t[0] for o, t in zip(one, two, strict=True))
        return out

    result: dict[str, Any] = {"reps": reps, "threads": torch.get_num_threads(), "default": timed()}
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 32 << 20) == 1 and libc.mallopt(-1, 1 << 30) == 1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        ok = False
    result["mallopt"] = timed() if ok and args.device == "cpu" else None
    return result


# ---------------------------------------------------------------------------------------------- printing


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _short(shapes: str, width: int = 60) -> str:
    return "-" if not shapes else shapes if len(shapes) <= width else shapes[:width - 3] + "..."


def print_profile(prof: dict[str, dict[str, Any]], alone: dict[str, Any], top: int) -> dict[str, Any]:
    a, b = prof[PROFILED[0]], prof[PROFILED[1]]
    key = "self_device_us" if a["device"].startswith("cuda") else "self_cpu_us"  # GPU: kernel time
    ta, tb = per_sample_ms(a["rows"], a["samples"], key), per_sample_ms(b["rows"], b["samples"], key)
    rows = compare_ops(ta, tb, top)
    sa, sb = profile_shares(a["rows"], a["updates"]), profile_shares(b["rows"], b["updates"])
    print(f"\nprofile: 32 x 1 vs 16 x 2 at {a['image_size']} px, torchvision augmentation in the workers "
          f"(rows baseline, microbatch), {a['updates']} recorded updates x {EFFECTIVE_BATCH} samples each; "
          f"self {'GPU kernel' if key == 'self_device_us' else 'CPU'} time per operator (training process), ms/sample")
    print(f"{'operator':<58}{'32x1':>9}{'16x2':>9}{'16x2/32x1':>11}{'share of diff':>15}")
    for r in rows:
        print(f"{r['name'][:57]:<58}{r['a']:>9.3f}{r['b']:>9.3f}{r['ratio']:>10.2f}x{_pct(r['diff_share']):>15}")
    print(f"{'profiled wall time per sample (ProfilerStep*)':<58}{sa['wall_ms'] / a['samples']:>9.3f}"
          f"{sb['wall_ms'] / b['samples']:>9.3f}")
    print(f"{'data wait (DataLoader __next__) share of it':<58}{_pct(sa['data_wait_share']):>9}"
          f"{_pct(sb['data_wait_share']):>9}")
    print(f"{'optimizer step + zero_grad, ms per update (1 per 32 samples)':<58}"
          f"{sa['optimizer_ms_per_update']:>9.2f}{sb['optimizer_ms_per_update']:>9.2f}")
    print("shapes carrying the most time of the top operators (32x1 | 16x2):")
    for r in rows[:min(6, top)]:
        sha, fa = top_shape(a["rows"], r["name"], key)
        shb, fb = top_shape(b["rows"], r["name"], key)
        print(f"  {r['name'][:50]}: {_short(sha)} ({_pct(fa)}) | {_short(shb)} ({_pct(fb)})")
    print(f"model alone (fixed tensors, forward+backward, no loader/optimizer, {alone['threads']} threads, "
          f"median of {alone['reps']}):")
    for tag, label in (("default", "default allocator"), ("mallopt", "glibc heap kept (mallopt)")):
        m = alone[tag]
        if m is None:
            print(f"  {label}: n/a (not glibc or not a CPU run)")
            continue
        print(f"  {label:<27} 32x1 {m['ms_per_sample_32x1']:.2f} ms/sample (CPU {m['cpu_ms_per_sample_32x1']:.2f}, "
              f"{m['page_faults_per_sample_32x1']:.0f} page faults), 16x2 {m['ms_per_sample_16x2']:.2f} ms/sample "
              f"(CPU {m['cpu_ms_per_sample_16x2']:.2f}, {m['page_faults_per_sample_16x2']:.0f} page faults): "
              f"16x2 {m['speedup_16x2']:.2f}x")
    return {"ops": rows, "shares": {PROFILED[0]: sa, PROFILED[1]: sb}, "model_alone": alone}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(os.environ.get("MLDATA_ROOT", "../shared/data"), "flowers"))
    p.add_argument("--config", default=None, help="a plantid preset (cpu: EfficientNet-Lite0, offline weights) "
                   "or YAML: its hyperparameters, under the bench's fixed settings and each row's")
    p.add_argument("--model-type", default=None, choices=MODEL_TYPES,
                   help="default: the preset's, else dinov2_tiny; efficientnet_lite0 uses its offline weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=8, help="optimizer updates (32 samples each) per row")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--size-scale", type=float, default=0.25, help="scale of the 518/448 px image sizes")
    p.add_argument("--no-eval", dest="evaluate", action="store_false", help="skip the val accuracy column")
    p.add_argument("--profile", action="store_true", help="profile 32 x 1 vs 16 x 2 and time the model alone")
    p.add_argument("--profile-steps", type=int, default=3, help="recorded updates per profiled variant")
    p.add_argument("--profile-top", type=int, default=15, help="operators in the profile table")
    p.add_argument("--alone-reps", type=int, default=5, help="repetitions of the model-alone timing")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    setup_logging(logging.WARNING)  # before any run: mlcore keeps the first level (the table stays readable)
    for flag_, value in (("--steps", args.steps), ("--repeats", args.repeats), ("--profile-steps", args.profile_steps),
                         ("--profile-top", args.profile_top), ("--alone-reps", args.alone_reps)):
        if value < 1:
            print(f"plantid_speed: error: {flag_} must be >= 1 (got {value})", file=sys.stderr)
            return 2
    if not args.size_scale > 0:
        print(f"plantid_speed: error: --size-scale must be > 0 (got {args.size_scale})", file=sys.stderr)
        return 2
    try:
        if args.model_type is None:
            args.model_type = make_config_preset_model(args.config)
        args.pretrained = args.model_type == "efficientnet_lite0"
        args.epochs = 1
        with tempfile.TemporaryDirectory() as tmp:
            cfg = make_config(args, Path(tmp) / "check", ROWS["baseline"][1])  # bad flags: one line, no work
            index = load_index(cfg.data, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                               seed=cfg.seed, test_seed=cfg.test_seed)  # the splits plantid.train builds
            n_train = len(index.samples("train"))
            # enough epochs for --steps updates (the cosine schedule spans them; --max-steps stops the run)
            args.epochs = max(1, math.ceil(args.steps / max(1, n_train // EFFECTIVE_BATCH)))
            return run(args, index.num_classes, n_train, Path(tmp))
    except (ConfigError, DataError, OSError, RuntimeError) as exc:
        print(f"plantid_speed: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def make_config_preset_model(preset: str | None) -> str:
    """The preset's ``model_type`` (``dinov2_tiny`` without a preset or if it names none)."""
    if preset is None:
        return "dinov2_tiny"
    from mlcore.cli import load_preset
    return str(load_preset(preset, "plantid").get("model_type", "dinov2_tiny"))


def run(args: argparse.Namespace, num_classes: int, n_train: int, tmp: Path) -> int:
    names = list(ROWS)
    if capped_workers(ROWS["workers8"][1]["num_workers"]) == capped_workers(ROWS["px448"][1]["num_workers"]):
        names.remove("workers8")
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else list(reversed(names))):
            results[name].append(measure(name, args, tmp / f"r{r}", evaluate=args.evaluate and r == 0))
    print(f"plantid speed: {args.model_type}{' (pretrained)' if args.pretrained else ' (random init)'} on "
          f"{args.device}, preset {args.config or 'none'}, {args.steps} updates x {EFFECTIVE_BATCH} samples per row, "
          f"{args.repeats} repeat(s), {n_train} training images, cpu_count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'row':<12}{'change':<30}{'px':>5}{'micro x acc':>12}{'wrk':>4}{'aug':>7}{'samples/s':>10}"
          f"{'epoch':>8}{'wait':>7}{'vs prev':>8}{'vs base':>8}{'top-1':>7}{'F1':>7}{'top-1/base':>11}")
    table: dict[str, Any] = {}
    prev = None
    base = results["baseline"]
    for name in names:
        runs = results[name]
        sps = statistics.median(x["samples_per_s"] for x in runs)
        vs_base = statistics.median(x["samples_per_s"] / b["samples_per_s"] for x, b in zip(runs, base, strict=True))
        vs_prev = statistics.median(x["samples_per_s"] / q["samples_per_s"]
                                    for x, q in zip(runs, results[prev], strict=True)) if prev else 1.0
        wait = statistics.median(x["data_wait_fraction"] for x in runs)
        r0 = runs[0]
        rel = r0["val_top1"] / base[0]["val_top1"] if args.evaluate and base[0]["val_top1"] else None
        table[name] = {**r0, "change": ROWS[name][0], "samples_per_s": sps, "data_wait_fraction": wait,
                       "speedup_vs_previous": vs_prev, "speedup_vs_baseline": vs_base,
                       "epoch_time_s_projected": n_train / sps, "val_top1_relative_to_baseline": rel}
        acc = (f"{r0['val_top1']:>7.3f}{r0['val_f1']:>7.3f}{_pct(rel):>11}" if args.evaluate else
               f"{'-':>7}{'-':>7}{'-':>11}")
        print(f"{name:<12}{ROWS[name][0]:<30}{r0['image_size']:>5}{r0['micro_batch']:>6} x {r0['accum_steps']:<3}"
              f"{r0['workers']:>4}{'device' if r0['gpu_aug'] else 'cpu':>7}{sps:>10.2f}{n_train / sps:>7.0f}s"
              f"{_pct(wait):>7}{vs_prev:>7.2f}x{vs_base:>7.2f}x{acc}")
        prev = name
    if "workers8" not in names:
        print(f"(row workers8, 4 -> 8 loader workers, left out: both cap at {capped_workers(8)} on this "
              f"{os.cpu_count()}-CPU machine, so px448 is the seed's optimised configuration here)")
    if args.evaluate:
        print("accuracy: plantid-eval --split val on each row's last.pt after the same updates"
              + ("" if args.pretrained else "; random init, so chance level: use --config cpu for a meaningful column"))
    out: dict[str, Any] = {"rows": table, "settings": {k: v for k, v in vars(args).items()}}
    if args.profile:
        prof = {name: profile_variant(name, args, tmp / "profile") for name in PROFILED}
        alone = model_alone(args, num_classes, prof[PROFILED[0]]["image_size"], args.alone_reps)
        out["profile"] = print_profile(prof, alone, args.profile_top)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

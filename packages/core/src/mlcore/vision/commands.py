"""The bodies of ``<domain>-eval``, ``<domain>-predict`` and ``<domain>-export`` for image classifiers.

A domain supplies one function, ``load(checkpoint: Path) -> LoadedClassifier`` (rebuild its model from a
checkpoint it wrote); everything else (flags, data, preprocessing from the model's data config, test-time
augmentation, metrics and reports, top-k prediction files, ONNX export with a parity check) is here, so
foodrec and plantid behave alike.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mlcore.checkpoint import CheckpointError
from mlcore.cli import ArgumentParser, run_cli
from mlcore.config import ConfigError
from mlcore.data import make_loader
from mlcore.devices import DEVICE_FORMS, build_strategy, check_device
from mlcore.export import export_onnx as export_model_onnx
from mlcore.export import onnx_parity
from mlcore.metrics import ClassificationMetrics
from mlcore.reports import write_classification_report
from mlcore.runlog import write_json_atomic
from mlcore.trainer import evaluate_model
from mlcore.vision.images import ImageDataset, load_image
from mlcore.vision.index import IMAGE_SUFFIXES, DataError, load_index
from mlcore.vision.preprocess import TTA_MODES, eval_transform, with_tta

log = logging.getLogger("mlcore.vision")

PARITY_TOLERANCE = 1e-3
"""Largest accepted max abs logit difference between eager PyTorch and ONNX Runtime."""


@dataclass
class LoadedClassifier:
    """A classifier rebuilt from a checkpoint by a domain's ``load`` function.

    Attributes:
        model: in eval mode, on the CPU; ``(N, 3, S, S)`` float32 normalised -> ``(N, C)`` logits.
        config: the run's configuration dict (``image_size``, ``val_fraction``, ``seed``, ...).
        classes: class folder names / ids in output order; labels: display names, same order.
        data_config: preprocessing (:func:`mlcore.vision.resolve_data_config`).
        step: ``step(model, batch) -> {"loss", "logits"}`` for evaluation (the domain's loss).
    """

    model: nn.Module
    config: dict[str, Any]
    classes: list[str]
    labels: list[str]
    data_config: dict[str, Any]
    step: Callable[[nn.Module, Mapping[str, torch.Tensor]], Mapping[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)


def class_names(ckpt: Mapping[str, Any], path: str | Path) -> tuple[list[str], list[str]]:
    """``(classes, labels)`` of a checkpoint: its ``classes``/``labels`` keys, or for checkpoints written
    before they existed the run's ``label_mapping.json`` (``RUN/checkpoints/X.pt`` -> ``RUN/``).

    Raises:
        CheckpointError: neither is there.
    """
    if isinstance(ckpt.get("classes"), list):
        classes = [str(c) for c in ckpt["classes"]]
        labels = [str(v) for v in ckpt.get("labels") or classes]
        return classes, labels
    mapping = Path(path).resolve().parent.parent / "label_mapping.json"
    if mapping.is_file():
        data = json.loads(mapping.read_text())
        classes = [str(c) for c in data.get("classes") or data.get("labels") or []]
        return classes, [str(v) for v in data.get("labels") or classes]
    raise CheckpointError(f"{path}: no class list (no 'classes' key and no {mapping})")


def _positive(value: int, name: str) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1 (got {value})")


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint written by the train command (best_*.pt, last.pt)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--num-workers", type=int, default=0, help="loader worker processes (capped at the CPUs)")
    p.add_argument("--device", default="auto", help=f"one of {DEVICE_FORMS}")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: flip (image + mirror), five-crop (4 corners + centre); logits averaged")


def _prepare(args: argparse.Namespace, load: Callable[[Path], LoadedClassifier], precision: str = "auto"):
    check_device(args.device)  # a bad --device is one line (exit 2) before anything is read
    _positive(args.batch_size, "--batch-size")
    if args.num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0 (got {args.num_workers})")
    loaded = load(Path(args.checkpoint))
    strategy = build_strategy(args.device, precision)
    model = strategy.prepare_model(with_tta(loaded.model, args.tta))
    return loaded, strategy, model


# ------------------------------------------------------------------------------------------------ eval


def eval_main(argv: Sequence[str] | None, *, prog: str, load: Callable[[Path], LoadedClassifier],
              default_split: str = "test", user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """``<prog> --checkpoint CKPT --data ROOT [--split test] [--tta flip] [--out DIR]``: top-1, top-5, macro
    precision/recall/F1, loss and per-class F1 of a checkpoint on a split, as one JSON object on the last
    line of stdout; ``--out DIR`` also writes ``confusion_matrix.png`` and ``per_class.csv``.

    The split is rebuilt exactly as in training (``val_fraction``, ``test_fraction``, ``seed`` and
    ``test_seed`` from the checkpoint's config). Returns the exit code (0 ok, 1 bad data or checkpoint,
    2 bad flags).
    """
    p = ArgumentParser(prog=prog, description="Evaluate a checkpoint on a split: metrics as JSON on the last line.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common_flags(p)
    p.add_argument("--data", required=True, help="dataset root (the train command's --data)")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default=default_split,
                   help="val selected the checkpoint; test is the reported figure")
    p.add_argument("--out", default=None, help="write confusion_matrix.png and per_class.csv to this folder")

    def run() -> int:
        args = p.parse_args(argv)
        if not Path(args.data).exists():
            raise ConfigError(f"--data {args.data}: folder not found")
        loaded, strategy, model = _prepare(args, load)
        cfg = loaded.config
        index = load_index(args.data, val_fraction=cfg.get("val_fraction", 0.2),
                           test_fraction=cfg.get("test_fraction", 0.0), seed=cfg.get("seed", 0),
                           test_seed=cfg.get("test_seed", 0))
        if index.classes != loaded.classes:
            raise CheckpointError(f"{args.checkpoint}: its {len(loaded.classes)} classes are not the "
                                  f"{index.num_classes} classes of {args.data} (first difference: "
                                  f"{_first_difference(loaded.classes, index.classes)})")
        ds = ImageDataset(index.samples(args.split), eval_transform(loaded.data_config, args.tta))
        loader = make_loader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
        metric = ClassificationMetrics(index.num_classes)
        result = evaluate_model(model, loader, loaded.step, [metric], strategy, desc=args.split)
        per_class = metric.per_class_f1(index.labels)
        if args.out:
            write_classification_report(metric, index.classes, index.labels, args.out)
        print(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split, "tta": args.tta,
                          "n_images": len(ds), **{k: v for k, v in result.items() if "/" not in k},
                          "per_class_f1": per_class}))
        return 0

    return run_cli(run, prog=prog, user_errors=(DataError, CheckpointError, OSError, *user_errors))


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"class {i} is {x!r} vs {y!r}"
    return f"{len(a)} vs {len(b)} classes"


# --------------------------------------------------------------------------------------------- predict


def expand_images(inputs: Sequence[str]) -> list[Path]:
    """Image files named by ``inputs``: a file as given, a folder's images (recursively, sorted), or a glob
    pattern (``**`` recursive) filtered to :data:`~mlcore.vision.index.IMAGE_SUFFIXES`; duplicates once.

    Raises:
        ConfigError: an input that is neither an existing file, a folder nor a pattern matching an image.
    """
    out: dict[Path, None] = {}
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                           if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ConfigError(f"{item}: no image file, folder with images or glob matching images "
                              f"({', '.join(IMAGE_SUFFIXES)})")
        out.update(dict.fromkeys(found))
    return list(out)


class _PredictDataset(torch.utils.data.Dataset):
    """Photos to predict: ``{"image", "ok", "index"}``; with ``skip`` an unreadable photo gives ``ok=False``
    (and a zero image) instead of ``DataError``."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Any], torch.Tensor], skip: bool) -> None:
        self.paths, self.transform, self.skip = list(paths), transform, skip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image = self.transform(load_image(self.paths[index])).as_subclass(torch.Tensor).contiguous()
            return {"image": image, "ok": True, "index": index}
        except DataError as err:
            if not self.skip:
                raise DataError(f"{err}; --skip-bad-images skips unreadable photos") from err
            log.warning("skipped unreadable photo %s: %s", self.paths[index], err)
            probe = self.transform(load_image_placeholder())
            return {"image": torch.zeros_like(probe.as_subclass(torch.Tensor)), "ok": False, "index": index}


def load_image_placeholder() -> Any:
    """A 1x1 black ``tv_tensors.Image`` (the shape source for a skipped photo's zero input)."""
    from torchvision import tv_tensors

    return tv_tensors.Image(torch.zeros(3, 1, 1, dtype=torch.uint8))


def predict_rows(loaded: LoadedClassifier, model: nn.Module, paths: Sequence[Path], *, top_k: int = 5,
                 batch_size: int = 32, num_workers: int = 0, tta: str = "none", skip_bad_images: bool = False,
                 device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Top-k classes per photo: ``[{"image", "top": [{"class", "label", "probability"}, ...]}]``, softmax
    probabilities (rounded to 6 decimals) descending; skipped photos get ``"top": []`` and ``"error"``.
    Batched through a ``DataLoader`` with a tqdm bar; ``model`` is ``loaded.model`` (TTA-wrapped) on
    ``device``."""
    ds = _PredictDataset(paths, eval_transform(loaded.data_config, tta), skip_bad_images)
    loader = make_loader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    k = min(top_k, len(loaded.classes))
    rows: list[dict[str, Any]] = []
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc="predict", unit="batch", disable=None):
            prob = torch.softmax(model(batch["image"].to(device)).float(), dim=1).cpu()
            p, idx = prob.topk(k, dim=1)
            for i, ok, pi, ii in zip(batch["index"].tolist(), batch["ok"].tolist(), p.tolist(), idx.tolist(),
                                     strict=True):
                row: dict[str, Any] = {"image": str(paths[i])}
                row["top"] = [{"class": loaded.classes[j], "label": loaded.labels[j], "probability": round(q, 6)}
                              for q, j in zip(pi, ii, strict=True)] if ok else []
                if not ok:
                    row["error"] = "unreadable image"
                rows.append(row)
    return rows


def write_predictions(rows: Sequence[Mapping[str, Any]], out: str | Path, top_k: int) -> Path:
    """Write prediction rows to ``out``: ``.csv`` (``image, label_1, probability_1, ... label_k,
    probability_k``, one row per photo) or ``.json`` (the rows as a list).

    Raises:
        ConfigError: another suffix.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ConfigError(f"--out {out}: expected a .csv or .json file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        return write_json_atomic(out, list(rows))
    header = ["image"] + [f"{name}_{i}" for i in range(1, top_k + 1) for name in ("label", "probability")]
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            cells = [row["image"]]
            for t in row["top"]:
                cells += [t["label"], f"{t['probability']:.6f}"]
            w.writerow(cells + [""] * (len(header) - len(cells)))
    return out


def predict_main(argv: Sequence[str] | None, *, prog: str, load: Callable[[Path], LoadedClassifier],
                 user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """``<prog> IMAGES... --checkpoint CKPT [--top-k 5] [--out preds.csv|preds.json] [--tta flip]``.

    ``IMAGES``: files, folders (searched recursively) or glob patterns. Without ``--out`` one JSON object
    per photo goes to stdout. Classes come from the checkpoint. Returns the exit code (0 ok, 1 unreadable
    photo or checkpoint, 2 bad flags or no images).
    """
    p = ArgumentParser(prog=prog, description="Top-k classes per photo, from a file, a folder or a glob.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("images", nargs="+", help="photos: files, folders (recursive) or glob patterns ('dir/*.jpg')")
    _common_flags(p)
    p.add_argument("--top-k", type=int, default=5, help="classes per photo")
    p.add_argument("--out", default=None, help="preds.csv or preds.json (default: JSON lines on stdout)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable photos (their row has no classes) instead of stopping")

    def run() -> int:
        args = p.parse_args(argv)
        _positive(args.top_k, "--top-k")
        if args.out and Path(args.out).suffix.lower() not in (".csv", ".json"):
            raise ConfigError(f"--out {args.out}: expected a .csv or .json file name")
        paths = expand_images(args.images)
        # fp32: predict_rows runs the model without autocast, so --precision auto's choice (and its log line,
        # which would stand before a bad photo's one-line error on stderr) does not apply
        loaded, strategy, model = _prepare(args, load, precision="fp32")
        rows = predict_rows(loaded, model, paths, top_k=args.top_k, batch_size=args.batch_size,
                            num_workers=args.num_workers, tta=args.tta, skip_bad_images=args.skip_bad_images,
                            device=strategy.device)
        if args.out:
            out = write_predictions(rows, args.out, min(args.top_k, len(loaded.classes)))
            log.info("wrote %d predictions to %s", len(rows), out)
        else:
            for row in rows:
                print(json.dumps(row))
        return 0

    return run_cli(run, prog=prog, user_errors=(DataError, CheckpointError, OSError, *user_errors))


# ---------------------------------------------------------------------------------------------- export


def export_onnx(loaded: LoadedClassifier, out_dir: str | Path, *, name: str, opset: int = 17,
                tolerance: float = PARITY_TOLERANCE, sample_images: Sequence[str | Path] = (),
                checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Export ``loaded.model`` to ``OUT/NAME.onnx`` and its preprocessing to ``OUT/NAME.json``.

    The ONNX graph (:func:`mlcore.export.export_onnx`) maps input ``image`` ``(N, 3, S, S)`` float32
    (normalised as ``preprocessing`` says) to output ``logits`` ``(N, C)``, with a dynamic batch axis. Its
    ``metadata_props`` and the JSON sidecar record ``preprocessing`` (the data config: input size,
    interpolation, crop_pct, crop_mode, mean, std), ``classes``, ``labels`` and the source checkpoint.
    Before the files are moved into place, eager PyTorch and ONNX Runtime run on the same input at batch 1
    and 2 (``sample_images`` preprocessed, else seeded noise) and the max abs logit difference
    (:func:`mlcore.export.onnx_parity`) must be <= ``tolerance``. Returns the sidecar's content (with ``parity_max_abs_diff``).

    Raises:
        RuntimeError: parity above ``tolerance`` (nothing written).
        DataError: an unreadable sample image.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = loaded.data_config
    size = int(cfg["input_size"][-1])
    if sample_images:
        tf = eval_transform(cfg)
        imgs = [tf(load_image(p)).as_subclass(torch.Tensor) for p in list(sample_images)[:2]]
        if len(imgs) == 1:
            imgs.append(imgs[0].flip(-1))
        x = torch.stack(imgs)
        source = ", ".join(Path(p).name for p in list(sample_images)[:2])
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, size, size, generator=g)
        source = "normal noise (seed 0)"
    preprocessing = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    meta = {"preprocessing": preprocessing, "classes": loaded.classes, "labels": loaded.labels,
            "num_classes": len(loaded.classes), "input": "image", "output": "logits",
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None}
    onnx_path, json_path = out_dir / f"{name}.onnx", out_dir / f"{name}.json"
    tmp = out_dir / f".{name}.{os.getpid()}.onnx.tmp"
    model = loaded.model.eval()
    try:
        export_model_onnx(model, tmp, x[:1], metadata=meta, opset=opset, output_names=("logits",))
        diff = onnx_parity(model, tmp, (x[:1], x[:2]), output="logits")
        if not diff <= tolerance:
            raise RuntimeError(f"parity check failed: max abs logit difference ONNX vs PyTorch {diff:.3g} > "
                               f"tolerance {tolerance:g}; nothing written")
        os.replace(tmp, onnx_path)
    finally:
        tmp.unlink(missing_ok=True)
    info = {**meta, "onnx_file": onnx_path.name, "opset": opset, "parity_max_abs_diff": diff,
            "parity_input": source, "size_mb": round(onnx_path.stat().st_size / 1e6, 2)}
    write_json_atomic(json_path, info)
    log.info("wrote %s and %s (parity on %s: max abs logit diff %.2e)", onnx_path, json_path, source, diff)
    return info


class ExportError(RuntimeError):
    """The exported model failed its parity check."""


def export_main(argv: Sequence[str] | None, *, prog: str, load: Callable[[Path], LoadedClassifier],
                default_name: str, user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """``<prog> --checkpoint CKPT --out DIR [--name NAME] [--opset 17] [--sample-image PHOTO ...]``: ONNX +
    JSON sidecar (see :func:`export_onnx`); the sidecar is printed as one JSON line. Returns the exit code
    (0 ok, 1 bad checkpoint/photo or failed parity, 2 bad flags)."""
    p = ArgumentParser(prog=prog, description="Export a checkpoint to ONNX (dynamic batch) with its preprocessing.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by the train command")
    p.add_argument("--out", required=True, help="output folder (NAME.onnx + NAME.json)")
    p.add_argument("--name", default=default_name, help="file name stem")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 13)")
    p.add_argument("--tolerance", type=float, default=PARITY_TOLERANCE, help="max abs logit difference allowed")
    p.add_argument("--sample-image", nargs="+", default=(), metavar="IMAGE", help="photo(s) for the parity check")

    def run() -> int:
        args = p.parse_args(argv)
        if args.opset < 13:
            raise ConfigError(f"--opset must be >= 13 (got {args.opset})")
        if not args.tolerance > 0:
            raise ConfigError(f"--tolerance must be > 0 (got {args.tolerance})")
        loaded = load(Path(args.checkpoint))
        try:
            info = export_onnx(loaded, args.out, name=args.name, opset=args.opset, tolerance=args.tolerance,
                               sample_images=args.sample_image, checkpoint=args.checkpoint)
        except RuntimeError as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise ExportError(str(exc)) from exc
        print(json.dumps(info))
        return 0

    return run_cli(run, prog=prog, user_errors=(DataError, CheckpointError, ExportError, OSError, *user_errors))



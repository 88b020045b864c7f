"""Classification reports people look at: a confusion-matrix PNG, a per-class CSV, top-k labels.

Shared by every classification domain (foodrec, plantid) so their ``<domain>-eval --out DIR`` write
the same files.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mlcore.checkpoint import CheckpointError
from mlcore.metrics import ClassificationMetrics


def confusion_png(confusion: np.ndarray, classes: Sequence[str], path: str | Path, *, cell: int = 32) -> Path:
    """Render a ``(C, C)`` int confusion matrix (rows: true class, columns: predicted) as a PNG heatmap.

    Each row is normalised to recall (white 0 -> dark blue 1) and the counts are written in the cells;
    ``classes`` label the rows in full and the columns by their first 5 characters.

    Raises:
        ValueError: ``confusion`` is not ``(len(classes), len(classes))``.
    """
    confusion = np.asarray(confusion)
    c = len(classes)
    if confusion.shape != (c, c):
        raise ValueError(f"confusion: expected shape ({c}, {c}) for {c} classes, got {confusion.shape}")
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    margin = 10 + 7 * max(len(n) for n in classes)
    img = Image.new("RGB", (margin + c * cell + 8, margin + c * cell + 8), "white")
    draw = ImageDraw.Draw(img)
    for i in range(c):
        draw.text((4, margin + i * cell + cell // 3), classes[i], fill="black")
        draw.text((margin + i * cell + 2, 4 + (i % 2) * 12), classes[i][:5], fill="black")
        for j in range(c):
            v = float(rows[i, j])
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1],
                           fill=(int(255 * (1 - v)), int(255 * (1 - 0.8 * v)), 255), outline=(220, 220, 220))
            if confusion[i, j]:
                draw.text((x0 + 4, y0 + cell // 3), str(int(confusion[i, j])), fill="white" if v > 0.5 else "black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_classification_report(metric: ClassificationMetrics, classes: Sequence[str], labels: Sequence[str],
                                out_dir: str | Path) -> dict[str, Path]:
    """Write ``confusion_matrix.png`` and ``per_class.csv`` (class, label, f1, support) for an evaluated metric.

    Args:
        metric: after evaluation (its confusion matrix holds the split's counts).
        classes: class folder names / ids, in label order.
        labels: display names, in the same order (used in the PNG and as the ``label`` column).
        out_dir: created if missing.

    Returns ``{"confusion_matrix": png path, "per_class": csv path}``.

    Raises:
        ValueError: ``classes``/``labels`` lengths differ from the metric's number of classes.
    """
    if len(classes) != metric.num_classes or len(labels) != metric.num_classes:
        raise ValueError(f"classes/labels: expected {metric.num_classes} names each, got {len(classes)}/{len(labels)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    confusion = metric.confusion.cpu().numpy()
    png = confusion_png(confusion, labels, out / "confusion_matrix.png")
    f1 = metric.per_class_f1(classes)
    table = out / "per_class.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "label", "f1", "support"])
        for name, label, support in zip(classes, labels, confusion.sum(axis=1).tolist(), strict=True):
            w.writerow([name, label, round(f1[name], 6), int(support)])
    return {"confusion_matrix": png, "per_class": table}


def load_label_names(checkpoint: str | Path, labels_file: str | Path | None = None) -> list[str]:
    """Class display names in model-output order, for ``<domain>-predict``.

    From ``labels_file`` (a ``label_mapping.json`` with a ``"labels"`` list, or one name per line), else
    the ``label_mapping.json`` of the run the checkpoint belongs to (``RUN/checkpoints/X.pt`` ->
    ``RUN/label_mapping.json``).

    Raises:
        CheckpointError: no label file found, or a JSON file without a ``"labels"`` list.
    """
    path = Path(labels_file) if labels_file else Path(checkpoint).resolve().parent.parent / "label_mapping.json"
    if not path.is_file():
        raise CheckpointError(f"labels not found: {path} (pass --labels FILE)")
    if path.suffix == ".json":
        labels = json.loads(path.read_text()).get("labels")
        if not isinstance(labels, list):
            raise CheckpointError(f"{path}: expected a JSON object with a 'labels' list")
        return [str(x) for x in labels]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def top_k_labels(logits: torch.Tensor, labels: Sequence[str], k: int = 5) -> list[dict[str, float | str]]:
    """``[{"label", "probability"}, ...]``: the ``min(k, C)`` most likely classes of one ``(C,)`` logit
    vector, softmax probabilities (rounded to 6 decimals) in descending order."""
    prob = torch.softmax(logits.float().flatten(), dim=-1)
    p, i = prob.topk(min(k, prob.numel()))
    return [{"label": labels[j], "probability": round(float(q), 6)} for q, j in zip(p.tolist(), i.tolist(), strict=True)]

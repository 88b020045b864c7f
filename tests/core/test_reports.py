"""mlcore.reports: the confusion-matrix PNG and per-class CSV written by classification evals."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from mlcore.metrics import ClassificationMetrics
from mlcore.reports import confusion_png, top_k_labels, write_classification_report


def test_report_files_match_the_metric(tmp_path):
    metric = ClassificationMetrics(3)
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    metric.update({"logits": logits}, {"label": torch.tensor([0, 1, 1, 1])})
    files = write_classification_report(metric, ["a", "b", "c"], ["Apple", "Banana", "Cherry"], tmp_path / "ev")
    rows = list(csv.DictReader(open(files["per_class"])))
    assert [(r["class"], r["label"], int(r["support"])) for r in rows] == [("a", "Apple", 1), ("b", "Banana", 3),
                                                                           ("c", "Cherry", 0)]
    assert [float(r["f1"]) for r in rows] == pytest.approx([2 / 3, 4 / 5, 0.0], abs=1e-6)
    png = np.asarray(Image.open(files["confusion_matrix"]).convert("RGB"))
    assert png.shape[0] == png.shape[1] > 3 * 32  # a square heatmap with a label margin
    assert (png.reshape(-1, 3) != 255).any(axis=1).mean() > 0.05  # something was drawn


def test_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"confusion: expected shape \(2, 2\)"):
        confusion_png(np.zeros((3, 3), dtype=np.int64), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="expected 3 names each"):
        write_classification_report(ClassificationMetrics(3), ["a"], ["A"], tmp_path)


def test_top_k_labels_against_softmax():
    logits = torch.tensor([0.0, 2.0, 1.0])
    top = top_k_labels(logits, ["a", "b", "c"], k=5)  # k capped at C
    prob = torch.softmax(logits, dim=0)
    assert [t["label"] for t in top] == ["b", "c", "a"]
    assert [t["probability"] for t in top] == pytest.approx(prob[[1, 2, 0]].tolist(), abs=1e-6)


def test_load_label_names(tmp_path):
    import json

    from mlcore.checkpoint import CheckpointError
    from mlcore.reports import load_label_names

    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="labels not found"):
        load_label_names(ckpt)
    (tmp_path / "run" / "label_mapping.json").write_text(json.dumps({"classes": ["x"], "labels": ["X ray"]}))
    assert load_label_names(ckpt) == ["X ray"]
    (tmp_path / "names.txt").write_text("one\n\ntwo\n")
    assert load_label_names(ckpt, tmp_path / "names.txt") == ["one", "two"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CheckpointError, match="'labels' list"):
        load_label_names(ckpt, tmp_path / "bad.json")

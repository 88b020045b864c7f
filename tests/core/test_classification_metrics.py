"""mlcore.metrics.ClassificationMetrics against torchmetrics, summing across ranks, per-class F1."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from mlcore.metrics import ClassificationMetrics

C = 10


def _data(n: int, seed: int, classes: int = C) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += 1.0  # better than chance, so top-1/top-5 differ from 1/C, 5/C
    return logits, labels


def _reference(logits: torch.Tensor, labels: torch.Tensor, classes: int = C) -> dict[str, float]:
    return {
        "top1": MulticlassAccuracy(classes, top_k=1, average="micro")(logits, labels).item(),
        "top5": MulticlassAccuracy(classes, top_k=5, average="micro")(logits, labels).item(),
        "precision": MulticlassPrecision(classes, average="macro")(logits, labels).item(),
        "recall": MulticlassRecall(classes, average="macro")(logits, labels).item(),
        "f1": MulticlassF1Score(classes, average="macro")(logits, labels).item(),
    }


def _assert_close(got: dict[str, float], ref: dict[str, float]) -> None:
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_matches_torchmetrics_over_batches():
    logits, labels = _data(300, seed=0)
    metric = ClassificationMetrics(C)
    for lo, la in zip(logits.split(64), labels.split(64), strict=True):
        metric.update({"logits": lo, "loss": torch.tensor(0.0)}, {"label": la, "image": None})
    got = metric.compute()
    assert 0.2 < got["top1"] < got["top5"] < 1.0
    _assert_close(got, _reference(logits, labels))
    assert metric.confusion.dtype == torch.int64 and int(metric.confusion.sum()) == 300


def test_absent_and_never_predicted_classes_follow_torchmetrics():
    # Labels only in classes 0..5 and constant-ish logits: some classes never labelled, some never predicted.
    logits, labels = _data(40, seed=1, classes=C)
    labels = labels % 6
    logits[:, 7:] -= 10.0
    metric = ClassificationMetrics(C)
    metric.update({"logits": logits}, {"label": labels})
    _assert_close(metric.compute(), _reference(logits, labels))


def test_two_rank_sum_equals_one_metric_on_all_data():
    logits, labels = _data(200, seed=2)
    ranks = [ClassificationMetrics(C), ClassificationMetrics(C)]
    ranks[0].update({"logits": logits[:120]}, {"label": labels[:120]})
    ranks[1].update({"logits": logits[120:]}, {"label": labels[120:]})
    before = [{k: v.clone() for k, v in r.states().items()} for r in ranks]
    for rank, r in enumerate(ranks):
        # all_reduce(SUM) simulated: sync() reduces the states in registration order; add the other rank's.
        names = iter(before[rank])
        r.sync(lambda t, names=names, other=before[1 - rank]: t + other[next(names)])
    whole = ClassificationMetrics(C)
    whole.update({"logits": logits}, {"label": labels})
    for r in ranks:
        assert r.compute() == pytest.approx(whole.compute(), abs=1e-12)
        assert torch.equal(r.confusion, whole.confusion)


def test_per_class_f1_and_reset():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    metric = ClassificationMetrics(3)
    metric.update({"logits": logits}, {"label": labels})
    # class 0: TP 1, FP 1, FN 0 -> F1 = 2/3; class 1: TP 2, FP 0, FN 1 -> F1 = 4/5; class 2 absent -> 0
    per_class = metric.per_class_f1(["a", "b", "c"])
    assert per_class == pytest.approx({"a": 2 / 3, "b": 4 / 5, "c": 0.0})
    got = metric.compute()
    assert got["top1"] == pytest.approx(0.75) and got["top5"] == 1.0  # top-k capped at C = 3
    assert got["f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)  # macro over the classes that occur
    metric.reset()
    assert metric.compute() == {"top1": 0.0, "top5": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="classes: expected 3 names"):
        metric.per_class_f1(["a"])
    named = ClassificationMetrics(3, ["a", "b", "c"])
    named.update({"logits": logits}, {"label": labels})
    assert {k: v for k, v in named.compute().items() if "/" in k} == pytest.approx(
        {"f1/a": 2 / 3, "f1/b": 4 / 5, "f1/c": 0.0})
    with pytest.raises(ValueError, match="class_names: expected 3 names"):
        ClassificationMetrics(3, ["a"])


def test_bad_inputs():
    metric = ClassificationMetrics(3)
    with pytest.raises(ValueError, match=r"outputs\['logits'\]: expected shape \(N, 3\)"):
        metric.update({"logits": torch.zeros(2, 4)}, {"label": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match=r"batch\['label'\]: expected"):
        metric.update({"logits": torch.zeros(2, 3)}, {"label": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="class indices must lie in"):
        metric.update({"logits": torch.zeros(2, 3)}, {"label": torch.tensor([0, 3])})

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from plantid.metrics import ClassificationMetrics


def test_metrics_match_torchmetrics_over_batches():
    g = torch.Generator().manual_seed(0)
    c = 7
    logits = torch.randn(200, c, generator=g)
    labels = torch.randint(0, c, (200,), generator=g)
    logits[labels < 3, 0] += 2.0  # skew predictions so classes differ in F1
    m = ClassificationMetrics(c)
    for i in range(0, 200, 64):
        m.update({"logits": logits[i:i + 64]}, {"label": labels[i:i + 64]})
    out = m.compute()
    ref_top1 = MulticlassAccuracy(c, average="micro", top_k=1)(logits, labels)
    ref_top5 = MulticlassAccuracy(c, average="micro", top_k=5)(logits, labels)
    ref_f1 = MulticlassF1Score(c, average="macro")(logits, labels)
    assert out["top1"] == pytest.approx(float(ref_top1), abs=1e-6)
    assert out["top5"] == pytest.approx(float(ref_top5), abs=1e-6)
    assert out["f1"] == pytest.approx(float(ref_f1), abs=1e-6)
    per_class = m.per_class_f1([f"c{i}" for i in range(c)])
    ref = MulticlassF1Score(c, average=None)(logits, labels)
    assert [per_class[f"c{i}"] for i in range(c)] == pytest.approx(ref.tolist(), abs=1e-6)


def test_metrics_reject_bad_input():
    m = ClassificationMetrics(3)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        m.update({"logits": torch.zeros(2, 4)}, {"label": torch.zeros(2, dtype=torch.int64)})
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        m.update({"logits": torch.zeros(2, 3)}, {"label": torch.tensor([0, 3])})
    assert m.compute() == {"top1": 0.0, "top5": 0.0, "f1": 0.0}

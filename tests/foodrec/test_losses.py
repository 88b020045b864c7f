"""foodrec.losses: combined cross-entropy + focal loss on hard and soft targets, and timm mixup."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.data import Mixup

from foodrec.losses import CombinedClassificationLoss, make_mixup


def _manual(logits: list[list[float]], targets: list[list[float]], gamma: float = 2.0) -> tuple[float, float]:
    """Mean CE and focal (sum_c -t_c (1 - p_c)^gamma log p_c) written out with plain floats."""
    ces, fls = [], []
    for z, t in zip(logits, targets, strict=True):
        norm = sum(math.exp(v) for v in z)
        p = [math.exp(v) / norm for v in z]
        ces.append(-sum(tc * math.log(pc) for tc, pc in zip(t, p, strict=True)))
        fls.append(-sum(tc * (1 - pc) ** gamma * math.log(pc) for tc, pc in zip(t, p, strict=True)))
    return sum(ces) / len(ces), sum(fls) / len(fls)


def _smooth(label: int, c: int, eps: float) -> list[float]:
    return [(1 - eps) * (i == label) + eps / c for i in range(c)]


LOGITS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.2]]


def test_hard_targets_against_hand_computed_values():
    loss = CombinedClassificationLoss()
    got = loss(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor([0, 2]))
    ce, fl = _manual(LOGITS, [_smooth(0, 3, 0.1), _smooth(2, 3, 0.1)])
    assert got.item() == pytest.approx(0.7 * ce + 0.3 * fl, rel=1e-12)
    # Pinned: sample 0 has p = (0.8438, 0.1142, 0.0420), CE = 0.3365; the batch mean comes to 0.93059.
    assert got.item() == pytest.approx(0.93059, abs=1e-5)
    # The CE term is torch's label-smoothed cross-entropy.
    only_ce = CombinedClassificationLoss(ce_weight=1.0, focal_weight=0.0)
    ref = F.cross_entropy(torch.tensor(LOGITS), torch.tensor([0, 2]), label_smoothing=0.1)
    assert only_ce(torch.tensor(LOGITS), torch.tensor([0, 2])).item() == pytest.approx(ref.item(), rel=1e-6)


def test_single_sample_closed_form_without_smoothing():
    # One-hot target: focal is the paper's -(1 - p_y)^gamma log p_y.
    z = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    p = 1 / (1 + math.exp(-1.0))
    focal = CombinedClassificationLoss(ce_weight=0.0, focal_weight=1.0, label_smoothing=0.0, gamma=2.0)
    assert focal(z, torch.tensor([0])).item() == pytest.approx(-((1 - p) ** 2) * math.log(p), rel=1e-12)
    ce_like = CombinedClassificationLoss(ce_weight=0.0, focal_weight=1.0, label_smoothing=0.0, gamma=0.0)
    assert ce_like(z, torch.tensor([1])).item() == pytest.approx(-math.log(1 - p), rel=1e-12)


def test_soft_targets_are_not_smoothed_again():
    soft = [[0.6, 0.4, 0.0], [0.1, 0.2, 0.7]]
    loss = CombinedClassificationLoss()
    got = loss(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(soft, dtype=torch.float64))
    ce, fl = _manual(LOGITS, soft)
    assert got.item() == pytest.approx(0.7 * ce + 0.3 * fl, rel=1e-12)


def test_hard_targets_equal_one_hot_smoothed_soft_targets():
    torch.manual_seed(0)
    logits = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (8,))
    soft = F.one_hot(labels, 5).double() * 0.9 + 0.1 / 5
    loss = CombinedClassificationLoss()
    hard_value = loss(logits, labels)
    soft_value = loss(logits, soft)
    assert hard_value.item() == pytest.approx(soft_value.item(), rel=1e-12)
    (g_hard,) = torch.autograd.grad(hard_value, logits)
    (g_soft,) = torch.autograd.grad(soft_value, logits)
    assert torch.allclose(g_hard, g_soft)


def test_timm_mixup_applies_smoothing_once():
    torch.manual_seed(3)
    mixup = Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, prob=1.0, mode="batch", label_smoothing=0.1, num_classes=3)
    # Image 0 is all ones and image 1 all zeros, so the mixed image 0 holds lambda.
    x = torch.stack([torch.ones(3, 4, 4), torch.zeros(3, 4, 4)])
    labels = torch.tensor([0, 2])
    mixed_x, target = mixup(x.clone(), labels)
    lam = mixed_x[0, 0, 0, 0].item()
    assert 0.0 <= lam <= 1.0
    once = [[lam * a + (1 - lam) * b for a, b in zip(_smooth(0, 3, 0.1), _smooth(2, 3, 0.1), strict=True)],
            [lam * a + (1 - lam) * b for a, b in zip(_smooth(2, 3, 0.1), _smooth(0, 3, 0.1), strict=True)]]
    assert torch.allclose(target.double(), torch.tensor(once, dtype=torch.float64), atol=1e-6)
    got = CombinedClassificationLoss()(torch.tensor(LOGITS, dtype=torch.float64), target.double())
    ce, fl = _manual(LOGITS, once)
    assert got.item() == pytest.approx(0.7 * ce + 0.3 * fl, rel=1e-6)
    twice = [[0.9 * v + 0.1 / 3 for v in row] for row in once]
    ce2, fl2 = _manual(LOGITS, twice)
    assert abs(got.item() - (0.7 * ce2 + 0.3 * fl2)) > 1e-3


def test_make_mixup_follows_the_seed():
    mixup = make_mixup(101)
    assert isinstance(mixup, Mixup)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.switch_prob, mixup.label_smoothing, mixup.mix_prob) == (
        0.2, 1.0, 0.5, 0.1, 1.0)
    assert mixup.mode == "batch" and mixup.num_classes == 101 and mixup.mixup_enabled
    x, y = mixup(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert y.shape == (4, 101) and torch.allclose(y.sum(1), torch.ones(4))
    with pytest.raises(ValueError, match="num_classes"):
        make_mixup(0)


def test_bad_inputs():
    loss = CombinedClassificationLoss()
    with pytest.raises(ValueError, match="class indices must lie in"):
        loss(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="target: expected"):
        loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="logits: expected shape"):
        loss(torch.zeros(3), torch.tensor([0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        CombinedClassificationLoss(label_smoothing=1.0)

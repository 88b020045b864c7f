"""foodrec.losses: combined cross-entropy + focal loss on hard and soft targets, and timm mixup."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data import Mixup

from foodrec.losses import CombinedClassificationLoss, make_mixup


def _manual(logits: list[list[float]], targets: list[list[float]], gamma: float = 2.0,
            eps: float = 0.1) -> tuple[float, float]:
    """Mean CE (on the target smoothed by ``eps``) and focal (sum_c -t_c (1 - p_c)^gamma log p_c on the
    unsmoothed target), written out with plain floats: seed 002 smooths the CE term only."""
    ces, fls = [], []
    for z, t in zip(logits, targets, strict=True):
        norm = sum(math.exp(v) for v in z)
        p = [math.exp(v) / norm for v in z]
        s = [(1 - eps) * tc + eps / len(t) for tc in t]
        ces.append(-sum(sc * math.log(pc) for sc, pc in zip(s, p, strict=True)))
        fls.append(-sum(tc * (1 - pc) ** gamma * math.log(pc) for tc, pc in zip(t, p, strict=True)))
    return sum(ces) / len(ces), sum(fls) / len(fls)


def _onehot(label: int, c: int) -> list[float]:
    return [float(i == label) for i in range(c)]


LOGITS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.2]]


def test_hard_targets_against_hand_computed_values():
    loss = CombinedClassificationLoss()
    got = loss(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor([0, 2]))
    ce, fl = _manual(LOGITS, [_onehot(0, 3), _onehot(2, 3)])
    assert got.item() == pytest.approx(0.7 * ce + 0.3 * fl, rel=1e-12)
    # Pinned (issue 15: the focal term is no longer smoothed; it was 0.93059 when it was).
    assert got.item() == pytest.approx(0.91518, abs=1e-5)
    # The CE term is torch's label-smoothed cross-entropy, the focal term the paper's on the hard label.
    only_ce = CombinedClassificationLoss(ce_weight=1.0, focal_weight=0.0)
    ref = F.cross_entropy(torch.tensor(LOGITS), torch.tensor([0, 2]), label_smoothing=0.1)
    assert only_ce(torch.tensor(LOGITS), torch.tensor([0, 2])).item() == pytest.approx(ref.item(), rel=1e-6)
    only_focal = CombinedClassificationLoss(ce_weight=0.0, focal_weight=1.0, label_smoothing=0.1)
    p = torch.softmax(torch.tensor(LOGITS, dtype=torch.float64), 1)[[0, 1], [0, 2]]
    assert only_focal(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor([0, 2])).item() == pytest.approx(
        float((-(1 - p) ** 2 * p.log()).mean()), rel=1e-12)


def test_parts_are_the_two_terms():
    loss = CombinedClassificationLoss()
    parts = loss.parts(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor([0, 2]))
    ce, fl = _manual(LOGITS, [_onehot(0, 3), _onehot(2, 3)])
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-12) and parts["focal"].item() == pytest.approx(fl, rel=1e-12)
    assert parts["loss"].item() == pytest.approx(0.7 * ce + 0.3 * fl, rel=1e-12)


def _optimum_closed_form(c: int, eps: float = 0.1, gamma: float = 2.0) -> float:
    """argmin over p = p(true) (the other C-1 classes sharing 1 - p, the symmetric optimum) of
    0.7 [-(1 - eps + eps/C) log p - eps (C-1)/C log((1-p)/(C-1))] + 0.3 [-(1-p)^gamma log p], on a fine grid."""
    p = np.linspace(0.5, 0.99999, 400001)
    q = (1 - p) / (c - 1)
    ce = -(1 - eps + eps / c) * np.log(p) - eps * (c - 1) / c * np.log(q)
    fl = -((1 - p) ** gamma) * np.log(p)
    return float(p[np.argmin(0.7 * ce + 0.3 * fl)])


def test_optimum_matches_the_seed_closed_form_at_101_classes():
    """Minimising the loss over free logits lands on the closed-form optimum of the seed's loss, 0.902;
    smoothing the focal term too (the old behaviour) moved it to 0.866."""
    c = 101
    expected = _optimum_closed_form(c)
    assert expected == pytest.approx(0.902, abs=1e-3)
    z = torch.zeros(1, c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([z], lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")
    loss = CombinedClassificationLoss()

    def closure():
        opt.zero_grad()
        value = loss(z, torch.tensor([0]))
        value.backward()
        return value

    opt.step(closure)
    p_true = torch.softmax(z.detach(), 1)[0, 0].item()
    assert p_true == pytest.approx(expected, abs=2e-4)
    assert abs(p_true - 0.866) > 0.03


def test_soft_targets_smoothed_in_the_ce_term_only():
    soft = [[0.6, 0.4, 0.0], [0.1, 0.2, 0.7]]
    loss = CombinedClassificationLoss()
    got = loss(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(soft, dtype=torch.float64))
    ce, fl = _manual(LOGITS, soft)
    assert got.item() == pytest.approx(0.7 * ce + 0.3 * fl, rel=1e-12)


def test_hard_targets_equal_one_hot_soft_targets():
    torch.manual_seed(0)
    logits = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (8,))
    soft = F.one_hot(labels, 5).double()
    loss = CombinedClassificationLoss()
    hard_value = loss(logits, labels)
    soft_value = loss(logits, soft)
    assert hard_value.item() == pytest.approx(soft_value.item(), rel=1e-12)
    (g_hard,) = torch.autograd.grad(hard_value, logits)
    (g_soft,) = torch.autograd.grad(soft_value, logits)
    assert torch.allclose(g_hard, g_soft)


def test_mixed_target_gives_the_seeds_lambda_weighted_loss():
    """Seed 002: loss = lam L(pred, y1) + (1 - lam) L(pred, y2), with make_mixup's unsmoothed mixed rows."""
    torch.manual_seed(3)
    np.random.seed(3)
    mixup = make_mixup(3, cutmix_alpha=0.0)
    # Image 0 is all ones and image 1 all zeros, so the mixed image 0 holds lambda.
    x = torch.stack([torch.ones(3, 4, 4), torch.zeros(3, 4, 4)])
    labels = torch.tensor([0, 2])
    mixed_x, target = mixup(x.clone(), labels)
    lam = mixed_x[0, 0, 0, 0].item()
    assert 0.0 <= lam <= 1.0
    rows = [[lam * a + (1 - lam) * b for a, b in zip(_onehot(0, 3), _onehot(2, 3), strict=True)],
            [lam * a + (1 - lam) * b for a, b in zip(_onehot(2, 3), _onehot(0, 3), strict=True)]]
    assert torch.allclose(target.double(), torch.tensor(rows, dtype=torch.float64), atol=1e-6)
    z = torch.tensor(LOGITS, dtype=torch.float64)
    loss = CombinedClassificationLoss()
    got = loss(z, target.double())
    by_lambda = lam * loss(z, labels) + (1 - lam) * loss(z, labels.flip(0))
    assert got.item() == pytest.approx(by_lambda.item(), rel=1e-6)


def test_make_mixup_follows_the_seed():
    mixup = make_mixup(101)
    assert isinstance(mixup, Mixup)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.switch_prob, mixup.label_smoothing, mixup.mix_prob) == (
        0.2, 1.0, 0.5, 0.0, 1.0)
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

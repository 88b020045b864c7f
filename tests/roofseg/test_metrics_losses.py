"""roofseg metrics (against closed forms and smp) and losses (label masking, thin-structure weighting)."""

from __future__ import annotations

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from roofseg.data import IGNORE_INDEX
from roofseg.losses import RoofLoss, ThinStructureLoss
from roofseg.metrics import RoofMetrics, boundary, iou_table, matched, prf


def _onehot_logits(classes: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(classes, n).permute(0, 3, 1, 2).float() * 10


def test_class_iou_matches_smp():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 9, (2, 16, 16), generator=g)
    pred = torch.where(torch.rand(2, 16, 16, generator=g) < 0.7, target, torch.randint(0, 9, (2, 16, 16), generator=g))
    m = RoofMetrics(("superstructures",))
    m.update({"logits": {"superstructures": _onehot_logits(pred, 9)}},
             {"superstructures": target, "has_superstructures": torch.tensor([True, True])})
    out = m.compute()
    tp, fp, fn, tn = smp.metrics.get_stats(pred, target, mode="multiclass", num_classes=9)
    ref = smp.metrics.iou_score(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0))  # per class, pooled
    for i, name in enumerate(["pvmodule", "dormer", "window", "ladder", "chimney", "shadow", "tree", "unknown",
                              "background"]):
        assert out[f"superstructures_iou_{name}"] == pytest.approx(float(ref[i]), abs=1e-6)
    assert out["superstructures_miou"] == pytest.approx(float(ref.mean()), abs=1e-6)


def test_ignored_pixels_and_unlabelled_samples_do_not_count():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2] = IGNORE_INDEX
    pred = torch.ones(2, 4, 4, dtype=torch.long)
    pred[0] = 0
    m = RoofMetrics(("segments",), sectors=4)
    m.update({"logits": {"segments": _onehot_logits(pred, 6)}},
             {"segments": target, "has_segments": torch.tensor([True, False])})
    conf = m.conf_segments
    assert int(conf.sum()) == 8 and int(conf[0, 0]) == 8  # only the 8 labelled pixels of sample 0


def test_iou_table_skips_empty_classes():
    conf = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    out = iou_table(conf, ["a", "b", "background"], "x")
    assert out["x_iou_a"] == pytest.approx(3 / 4) and out["x_iou_b"] == pytest.approx(2 / 3)
    assert "x_iou_background" not in out
    assert out["x_miou"] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_outline_iou_and_boundary_f1():
    t = torch.zeros(1, 1, 32, 32)
    t[..., 8:24, 8:24] = 1
    p = torch.zeros(1, 1, 32, 32)
    p[..., 8:24, 10:26] = 1  # shifted 2 px: within the 3 px boundary tolerance
    m = RoofMetrics(("outline",))
    m.update({"logits": {"outline": (p * 2 - 1) * 10}}, {"outline": t, "has_outline": torch.tensor([True])})
    out = m.compute()
    assert out["outline_iou"] == pytest.approx(14 * 16 / (18 * 16))
    assert out["outline_boundary_f1"] == pytest.approx(1.0)
    b = boundary(t[:, 0] > 0)
    assert int(b.sum()) == 4 * 15


def test_line_scores_with_tolerance():
    gt = torch.zeros(1, 2, 40, 40, dtype=torch.uint8)
    gt[0, 0, 20, 5:35] = 1  # a horizontal line
    gt[0, 1, 20, 5] = 1     # a junction
    for shift, expect in ((0, 1.0), (2, 1.0), (5, 0.0)):
        logits = torch.full((1, 3, 40, 40), -10.0)
        logits[0, 0, 20 + shift, 5:35] = 10  # predicted inner line, shifted
        logits[0, 2, 20 + shift, 5] = 10
        m = RoofMetrics(("lines",), tolerance=3)
        m.update({"logits": {"lines": logits}}, {"lines_thin": gt, "has_lines": torch.tensor([True])})
        out = m.compute()
        assert out["line_f1"] == pytest.approx(expect, abs=0.05), shift
        assert out["junction_f1"] == pytest.approx(expect), shift


def test_matched_and_prf_closed_forms():
    a = torch.zeros(1, 10, 10, dtype=torch.bool)
    b = torch.zeros(1, 10, 10, dtype=torch.bool)
    a[0, 0, 0] = a[0, 9, 9] = True
    b[0, 0, 3] = True
    assert int(matched(a, b, 3)) == 1 and int(matched(a, b, 2)) == 0
    assert prf(1, 2, 1, 1) == pytest.approx((0.5, 1.0, 2 / 3))
    assert prf(0, 0, 0, 0) == (1.0, 1.0, 1.0)


def test_roof_loss_masks_missing_labels():
    torch.manual_seed(0)
    logits = {"outline": torch.randn(2, 1, 8, 8), "superstructures": torch.randn(2, 9, 8, 8)}
    batch = {"outline": (torch.rand(2, 1, 8, 8) > 0.5).float(), "has_outline": torch.tensor([True, False]),
             "superstructures": torch.randint(0, 9, (2, 8, 8)), "has_superstructures": torch.tensor([False, False])}
    loss = RoofLoss({"outline": 2.0, "superstructures": 1.0})
    total, parts = loss(logits, batch)
    only_first, _ = RoofLoss({"outline": 1.0})({"outline": logits["outline"][:1]},
                                               {"outline": batch["outline"][:1]})
    assert total.item() == pytest.approx(2.0 * only_first.item(), rel=1e-5)
    assert set(parts) == {"outline"}
    # nothing labelled at all: zero, still differentiable
    batch["has_outline"] = torch.tensor([False, False])
    lg = {k: v.clone().requires_grad_() for k, v in logits.items()}
    total, parts = loss(lg, batch)
    total.backward()
    assert total.item() == 0.0 and parts == {}


def test_thin_structure_bce_weights_positives():
    logits = torch.zeros(1, 3, 2, 2)
    target = torch.zeros(1, 3, 2, 2)
    target[0, :, 0, 0] = 1
    loss = ThinStructureLoss(pos_weight=10.0, junction_pos_weight=10.0, dice_weight=0.0)
    # BCE at logit 0 is log 2 per pixel; positives weigh 10: mean = log2 * (10 + 3) / 4
    assert loss(logits, target).item() == pytest.approx(np.log(2) * 13 / 4, rel=1e-5)
    with pytest.raises(ValueError):
        ThinStructureLoss(pos_weight=0)


def test_heads_without_labelled_samples_report_nothing():
    m = RoofMetrics(("outline", "lines"))
    m.update({"logits": {"outline": torch.zeros(1, 1, 8, 8), "lines": torch.zeros(1, 3, 8, 8)}},
             {"outline": torch.ones(1, 1, 8, 8), "has_outline": torch.tensor([True]),
              "lines_thin": torch.zeros(1, 2, 8, 8, dtype=torch.uint8), "has_lines": torch.tensor([False])})
    out = m.compute()
    assert "outline_iou" in out and not any(k.startswith(("line_", "junction_")) for k in out)


def test_class_map_loss_weighted_ce_and_focal_closed_forms():
    from roofseg.losses import ClassMapLoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 9, 8, 8, generator=g)
    target = torch.randint(0, 9, (2, 8, 8), generator=g)
    target[0, 0, :4] = IGNORE_INDEX
    w = torch.linspace(0.5, 3.0, 9)
    ce = ClassMapLoss(dice_weight=0.0, class_weights=w)(logits, target)
    assert ce.item() == pytest.approx(F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE_INDEX).item(),
                                      rel=1e-5)
    focal = ClassMapLoss(dice_weight=0.0, focal_gamma=2.0)(logits, target)
    nll = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = target != IGNORE_INDEX
    ref = ((1 - torch.exp(-nll)) ** 2 * nll)[valid].mean()
    assert focal.item() == pytest.approx(ref.item(), rel=1e-5)


def test_dice_over_present_classes_ignores_absent_ones():
    from roofseg.losses import soft_dice_present

    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 2  # classes 0 and 2 present
    perfect = torch.full((1, 5, 4, 4), -20.0)
    perfect.scatter_(1, target[:, None], 20.0)
    assert soft_dice_present(perfect, target).item() == pytest.approx(0.0, abs=1e-3)
    other = perfect.clone()
    other[:, 4] = 5.0  # an absent class gets some probability: the loss rises only through the present ones
    a = soft_dice_present(other, target).item()
    assert 0 < a < 1

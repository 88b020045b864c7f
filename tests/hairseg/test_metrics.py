"""hairseg.metrics (pooled vs per-image IoU/F1/precision/recall, DDP sums, verdict) and hairseg.losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from hairseg.losses import BceDiceLoss
from hairseg.metrics import HairSegMetrics, binary_stats, verdict


def _logits(pred: torch.Tensor) -> torch.Tensor:
    """{0, 1} prediction -> logits whose sigmoid is clearly on the right side of 0.5."""
    return pred.float() * 8.0 - 4.0


def _two_images() -> tuple[torch.Tensor, torch.Tensor]:
    """(2, 1, 4, 4) prediction and mask.

    Image 0: mask 8 hair pixels, prediction 4 of them -> tp 4, fp 0, fn 4, tn 8 (IoU 0.5).
    Image 1: mask 1 hair pixel, prediction 4 pixels incl. it -> tp 1, fp 3, fn 0, tn 12 (IoU 0.25).
    """
    mask = torch.zeros(2, 1, 4, 4)
    pred = torch.zeros(2, 1, 4, 4)
    mask[0, 0, :2, :] = 1  # 8 pixels
    pred[0, 0, 0, :] = 1  # 4 of them
    mask[1, 0, 0, 0] = 1  # 1 pixel
    pred[1, 0, 0, :] = 1  # 4 pixels, 1 correct
    return pred, mask


def test_pooled_and_per_image_differ_and_match_hand_computation():
    pred, mask = _two_images()
    metric = HairSegMetrics()
    metric.update({"logits": _logits(pred)}, {"mask": mask})
    out = metric.compute()
    # Pooled: tp 5, fp 3, fn 4 -> IoU 5/12, precision 5/8, recall 5/9, F1 2*5/(2*5+3+4) = 10/17.
    assert out["iou"] == pytest.approx(5 / 12)
    assert out["precision"] == pytest.approx(5 / 8)
    assert out["recall"] == pytest.approx(5 / 9)
    assert out["f1"] == pytest.approx(10 / 17)
    # Per image: IoU (4/8, 1/4), precision (1, 1/4), recall (1/2, 1), F1 (8/12, 2/5).
    assert out["iou_per_image"] == pytest.approx((0.5 + 0.25) / 2)
    assert out["precision_per_image"] == pytest.approx((1 + 0.25) / 2)
    assert out["recall_per_image"] == pytest.approx((0.5 + 1) / 2)
    assert out["f1_per_image"] == pytest.approx((8 / 12 + 2 / 5) / 2)
    assert abs(out["iou"] - out["iou_per_image"]) > 0.03
    assert all(isinstance(v, float) for v in out.values())
    assert set(out) == {f"{k}{s}" for k in ("iou", "f1", "precision", "recall") for s in ("", "_per_image")}


def test_matches_smp_micro_and_micro_imagewise_on_random_batches():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1, 16, 12, generator=g) * 3
    mask = (torch.rand(6, 1, 16, 12, generator=g) < 0.4).float()
    mask[2] = 0  # an image without hair
    metric = HairSegMetrics()
    metric.update({"logits": logits[:4]}, {"mask": mask[:4]})
    metric.update({"logits": logits[4:]}, {"mask": mask[4:]})
    out = metric.compute()
    tp, fp, fn, tn = smp.metrics.get_stats(torch.sigmoid(logits), mask.long(), mode="binary", threshold=0.5)
    for name, fn_score in [
        ("iou", smp.metrics.iou_score),
        ("f1", smp.metrics.f1_score),
        ("precision", smp.metrics.precision),
        ("recall", smp.metrics.recall),
    ]:
        assert out[name] == pytest.approx(float(fn_score(tp, fp, fn, tn, reduction="micro")), abs=1e-7)
        assert out[f"{name}_per_image"] == pytest.approx(
            float(fn_score(tp, fp, fn, tn, reduction="micro-imagewise", zero_division=1.0)), abs=1e-7
        )


def test_empty_union_counts_as_perfect_image():
    metric = HairSegMetrics()
    empty = torch.zeros(1, 1, 8, 8)
    metric.update({"logits": _logits(empty)}, {"mask": empty})
    out = metric.compute()
    assert out["iou_per_image"] == 1.0 and out["f1_per_image"] == 1.0
    # Missed hair entirely: IoU 0, recall 0, precision 1 (no false positive; smp zero_division=1).
    missed = HairSegMetrics()
    full = torch.ones(1, 1, 8, 8)
    missed.update({"logits": _logits(empty)}, {"mask": full})
    out = missed.compute()
    assert (out["iou_per_image"], out["recall_per_image"], out["precision_per_image"]) == (0.0, 0.0, 1.0)
    assert all(math.isnan(v) for v in HairSegMetrics().compute().values())


def test_summed_states_of_two_ranks_equal_one_metric_over_all_data():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 1, 10, 10, generator=g) * 2
    mask = (torch.rand(5, 1, 10, 10, generator=g) < 0.3).float()
    whole = HairSegMetrics()
    whole.update({"logits": logits}, {"mask": mask})
    rank0, rank1 = HairSegMetrics(), HairSegMetrics()
    rank0.update({"logits": logits[:2]}, {"mask": mask[:2]})
    rank1.update({"logits": logits[2:]}, {"mask": mask[2:]})
    # all_reduce(SUM) as the trainer does under DDP: sync visits the states in registration order.
    other = iter(rank1.states().values())
    rank0.sync(lambda t: t + next(other))
    assert rank0.compute() == pytest.approx(whole.compute(), abs=1e-12)
    assert all(v.dtype == torch.float64 for v in rank0.states().values())
    rank0.reset()
    assert all(float(v) == 0.0 for v in rank0.states().values())


def test_update_rejects_bad_input():
    metric = HairSegMetrics()
    with pytest.raises(KeyError, match="logits"):
        metric.update({"out": torch.zeros(1, 1, 4, 4)}, {"mask": torch.zeros(1, 1, 4, 4)})
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        metric.update({"logits": torch.zeros(1, 1, 4, 4)}, {"mask": torch.zeros(1, 4, 4)})


def test_binary_stats_numpy_and_tensor():
    pred = np.zeros((4, 5), dtype=bool)
    target = np.zeros((4, 5), dtype=bool)
    pred[:2] = True  # 10 pixels
    target[1:3] = True  # 10 pixels, 5 shared
    stats = binary_stats(pred, target)
    assert (stats["tp"], stats["fp"], stats["fn"], stats["tn"]) == (5.0, 5.0, 5.0, 5.0)
    assert stats["iou"] == pytest.approx(1 / 3) and stats["f1"] == pytest.approx(0.5)
    assert binary_stats(torch.from_numpy(pred), torch.from_numpy(target)) == stats
    with pytest.raises(ValueError, match="same"):
        binary_stats(pred, target[:3])


@pytest.mark.parametrize(
    ("iou", "expected"),
    [(0.0, "reject"), (0.8499, "reject"), (0.85, "acceptable"), (0.9, "acceptable"), (0.9001, "production")],
)
def test_verdict_bands(iou, expected):
    assert verdict(iou) == expected


def test_verdict_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        verdict(float("nan"))
    with pytest.raises(ValueError):
        verdict(1.5)


def test_bce_dice_loss_closed_form():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]], [[[0.0, 1.5], [-0.5, 4.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]], [[[0.0, 0.0], [1.0, 1.0]]]])
    p = 1 / (1 + torch.exp(-logits.double()))
    t = target.double()
    pos_weight = 2.5
    bce = -(pos_weight * t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    dice = 1 - 2 * (p * t).sum() / (p.sum() + t.sum())  # soft Dice over the whole batch
    loss = BceDiceLoss(pos_weight=pos_weight, bce_weight=0.7, dice_weight=1.3)(logits, target)
    assert loss.ndim == 0
    assert float(loss) == pytest.approx(float(0.7 * bce + 1.3 * dice), rel=1e-6)
    plain = BceDiceLoss()(logits, target)
    bce1 = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    assert float(plain) == pytest.approx(float(bce1 + dice), rel=1e-6)


def test_bce_dice_loss_gradients_and_errors():
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1
    BceDiceLoss()(logits, target).backward()
    grad = logits.grad[0, 0]
    assert (grad[:2] < 0).all() and (grad[2:] > 0).all()  # hair pixels pushed up, background down
    with pytest.raises(ValueError, match="same shape"):
        BceDiceLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="pos_weight"):
        BceDiceLoss(pos_weight=0.0)

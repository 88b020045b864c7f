"""Roof metrics from summed states (exact over a split and across DDP ranks).

- Class maps (superstructures, segments): a confusion matrix summed over all labelled pixels;
  per-class IoU = TP / (TP + FP + FN) and mIoU = the mean over classes whose union is non-empty
  (background included, as in RID's evaluation; ``*_miou_fg`` leaves background out). Classes
  with an empty union over the split are not reported.
- Outline: pooled pixel IoU of ``sigmoid >= 0.5`` against the roof mask, and boundary F1: the
  1 px boundaries (mask minus its 3x3 erosion) matched within ``tolerance`` px (a disk), precision =
  predicted boundary pixels near a true one / predicted ones, recall the other way round.
- Lines: the predicted line map (max of the inner and eave probabilities >= 0.5) is thinned to
  1 px (``skimage.morphology.skeletonize``) and matched against the 1 px ground-truth lines within
  ``tolerance`` px (3 by default) in both directions: precision, recall, F1. Junctions: local
  maxima (5x5) of the junction heatmap >= 0.5 matched to true junction pixels within ``tolerance``.

A head for which no sample of the split carries a label reports no metric at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage.morphology import skeletonize

from mlcore.metrics import Metric
from roofseg.data.dataset import IGNORE_INDEX
from roofseg.data.rid import SUPERSTRUCTURE_CLASSES, segment_classes

THRESHOLD = 0.5


def _disk(radius: int, device: torch.device) -> torch.Tensor:
    r = int(radius)
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    return ((yy ** 2 + xx ** 2) <= r * r).float().to(device).view(1, 1, 2 * r + 1, 2 * r + 1)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(N, H, W)`` bool by a disk of ``radius`` px (bool, same shape)."""
    if radius <= 0:
        return mask.bool()
    k = _disk(radius, mask.device)
    return F.conv2d(mask.float()[:, None], k, padding=radius)[:, 0] > 0


def matched(a: torch.Tensor, b: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Number of True pixels of ``a`` within ``tolerance`` px of a True pixel of ``b`` (``(N, H, W)`` bool),
    per image: ``(N,)`` int64."""
    return (a.bool() & dilate(b, tolerance)).flatten(1).sum(1)


def boundary(mask: torch.Tensor) -> torch.Tensor:
    """1 px inner boundary of ``(N, H, W)`` bool masks: the mask minus its 3x3 erosion."""
    m = mask.float()[:, None]
    eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return (m - eroded)[:, 0] > 0


def thin_lines(prob: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """``(H, W)`` line probability -> ``(H, W)`` bool 1 px skeleton of ``prob >= threshold``."""
    return skeletonize(prob >= threshold)


def junction_peaks(heat: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """``(N, H, W)`` junction probabilities -> bool peaks (5x5 local maxima >= threshold)."""
    mx = F.max_pool2d(heat[:, None], 5, stride=1, padding=2)[:, 0]
    return (heat >= threshold) & (heat >= mx)


def prf(tp_pred: float, n_pred: float, tp_gt: float, n_gt: float) -> tuple[float, float, float]:
    """Precision, recall, F1 from tolerance-matched counts (an empty denominator gives 1.0 for
    precision/recall: nothing predicted is nothing wrong; F1 = 0 when both are 0)."""
    p = tp_pred / n_pred if n_pred else 1.0
    r = tp_gt / n_gt if n_gt else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def line_counts(pred: torch.Tensor, gt: torch.Tensor, tolerance: int) -> torch.Tensor:
    """``[pred matched, pred total, gt matched, gt total]`` (float64) for ``(N, H, W)`` bool maps."""
    return torch.stack([matched(pred, gt, tolerance).sum(), pred.sum(), matched(gt, pred, tolerance).sum(),
                        gt.sum()]).double()


def iou_table(conf: np.ndarray, names: Sequence[str], prefix: str) -> dict[str, float]:
    """Per-class IoU and mIoU from a ``(C, C)`` confusion matrix (rows truth, columns prediction)."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    out: dict[str, float] = {}
    ious, ious_fg = [], []
    for i, name in enumerate(names):
        if union[i] > 0:
            v = float(tp[i] / union[i])
            out[f"{prefix}_iou_{name}"] = v
            ious.append(v)
            if name != "background":
                ious_fg.append(v)
    out[f"{prefix}_miou"] = float(np.mean(ious)) if ious else 0.0
    out[f"{prefix}_miou_fg"] = float(np.mean(ious_fg)) if ious_fg else 0.0
    return out


class RoofMetrics(Metric):
    """Metrics of every head in ``heads`` (see the module docstring); samples without a head's
    label (``has_<head>`` False) are left out of that head's metrics.

    Args:
        heads: the model's heads.
        sectors: segment scheme.
        tolerance: matching tolerance in px for boundary F1, line and junction scores.

    ``update(outputs, batch)``: ``outputs["logits"]`` is the model's ``{head: logits}``.
    """

    def __init__(self, heads: Sequence[str], sectors: int = 16, tolerance: int = 3) -> None:
        super().__init__()
        self.heads = tuple(heads)
        self.tolerance = tolerance
        self.names = {"superstructures": SUPERSTRUCTURE_CLASSES, "segments": segment_classes(sectors)}
        # labelled samples per head: a head no sample of the split is labelled for reports nothing
        self.add_state("labelled", torch.zeros(len(self.heads), dtype=torch.int64))
        for h in ("superstructures", "segments"):
            if h in self.heads:
                n = len(self.names[h])
                self.add_state(f"conf_{h}", torch.zeros(n, n, dtype=torch.int64))
        if "outline" in self.heads:
            self.add_state("outline_px", torch.zeros(3, dtype=torch.float64))  # tp, fp, fn
            self.add_state("outline_bd", torch.zeros(4, dtype=torch.float64))
        if "lines" in self.heads:
            self.add_state("lines_px", torch.zeros(4, dtype=torch.float64))
            self.add_state("junctions", torch.zeros(4, dtype=torch.float64))

    def update(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        logits = outputs["logits"]
        for head in self.heads:
            has = batch.get(f"has_{head}")
            sel = has.bool() if has is not None else torch.ones(logits[head].shape[0], dtype=torch.bool)
            if not bool(sel.any()):
                continue
            self.labelled[self.heads.index(head)] += int(sel.sum())
            lg = logits[head][sel].float()
            if head in ("superstructures", "segments"):
                n = len(self.names[head])
                t = batch[head][sel]
                p = lg.argmax(1)
                valid = t != IGNORE_INDEX
                idx = t[valid] * n + p[valid]
                conf = getattr(self, f"conf_{head}")
                conf += torch.bincount(idx.flatten(), minlength=n * n).view(n, n).to(conf.device)
            elif head == "outline":
                p = torch.sigmoid(lg[:, 0]) >= THRESHOLD
                t = batch["outline"][sel][:, 0] > 0.5
                self.outline_px += torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]).double().to(
                    self.outline_px.device)
                self.outline_bd += line_counts(boundary(p), boundary(t), self.tolerance).to(self.outline_bd.device)
            elif head == "lines":
                prob = torch.sigmoid(lg)
                line_prob = prob[:, :2].amax(1).cpu().numpy()
                pred = torch.from_numpy(np.stack([thin_lines(x) for x in line_prob])).to(prob.device)
                thin = batch["lines_thin"][sel]
                self.lines_px += line_counts(pred, thin[:, 0] > 0, self.tolerance).to(self.lines_px.device)
                peaks = junction_peaks(prob[:, 2])
                self.junctions += line_counts(peaks, thin[:, 1] > 0, self.tolerance).to(self.junctions.device)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        heads = [h for i, h in enumerate(self.heads) if int(self.labelled[i]) > 0]
        for h in ("superstructures", "segments"):
            if h in heads:
                out.update(iou_table(getattr(self, f"conf_{h}").cpu().numpy(), self.names[h], h))
        if "outline" in heads:
            tp, fp, fn = self.outline_px.tolist()
            out["outline_iou"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
            out["outline_boundary_f1"] = prf(*self.outline_bd.tolist())[2]
        if "lines" in heads:
            p, r, f = prf(*self.lines_px.tolist())
            out.update(line_precision=p, line_recall=r, line_f1=f)
            p, r, f = prf(*self.junctions.tolist())
            out.update(junction_precision=p, junction_recall=r, junction_f1=f)
        return out

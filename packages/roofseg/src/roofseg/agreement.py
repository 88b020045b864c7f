"""``roofseg-agreement``: inter-annotator agreement of RID's annotation experiment.

RID (Krapf et al. 2022, section 3.3) had five labelers annotate the same tiles independently.
For every class this computes the IoU

- between labelers: for each of the 10 labeler pairs, intersection and union summed over all
  tiles both labelled, IoU = sum(I) / sum(U); reported is the mean over the pairs (min and max too);
- against the reviewed masks: each labeler vs ``masks_superstructures_reviewed`` (or
  ``roof_outlines_reviewed``), pooled the same way, mean over labelers.

A class with an empty union for a pair is skipped for that pair. The RID paper reports
agreement between 0.15 and 0.70 by superstructure class. Prints one JSON object on the last
stdout line; ``--out DIR`` also writes ``agreement.csv``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mlcore.cli import ArgumentParser, run_cli
from mlcore.config import ConfigError
from roofseg.data.dataset import outline_to_roof
from roofseg.data.rid import (
    SUPERSTRUCTURE_CLASSES,
    DataError,
    annotation_experiment,
    find_rid_root,
    find_rid_tiles,
)

OUTLINE_CLASSES = ("not_roof", "roof")


def _read(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except OSError as exc:
        raise DataError(f"{path}: cannot read mask ({exc})") from None


def _iu(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union counts of two ``(H, W)`` class maps (classes 0..n-1)."""
    if a.shape != b.shape:
        raise DataError(f"masks differ in size: {a.shape} vs {b.shape}")
    conf = np.bincount(a.astype(np.int64).ravel() * n + b.astype(np.int64).ravel(), minlength=n * n)[: n * n]
    conf = conf.reshape(n, n)
    inter = np.diag(conf).astype(np.float64)
    return inter, conf.sum(0) + conf.sum(1) - inter


def agreement(root: str | Path, kind: str = "superstructures", tiles: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-class agreement (see the module docstring) of ``kind`` = ``superstructures`` or ``outlines``,
    over the annotation-experiment tiles in ``tiles`` (default all).

    Returns:
        ``{"kind", "classes", "tiles", "labelers", "pairwise": {class: {"mean", "min", "max"}},
        "vs_reviewed": {class: {"mean", "min", "max"}}, "pairwise_miou", "vs_reviewed_miou"}``
        (the mIoUs over the foreground classes: background / not_roof left out).

    Raises:
        DataError: no RID root or no annotation-experiment masks under ``root``.
    """
    rid = find_rid_root(root)
    if rid is None:
        raise DataError(f"--data {root}: no RID root (images/ + masks_superstructures_reviewed/)")
    folder = "masks_superstructures" if kind == "superstructures" else "roof_outlines"
    exp = annotation_experiment(rid, folder)
    if tiles is not None:
        exp = {k: v for k, v in exp.items() if k in set(tiles)}
    if not exp:
        raise DataError(f"{rid}: no annotation_experiment/{folder}/ID_labelerK.png masks")
    names = SUPERSTRUCTURE_CLASSES if kind == "superstructures" else OUTLINE_CLASSES
    n = len(names)
    reviewed = {t.name: (t.superstructures if kind == "superstructures" else t.outline) for t in find_rid_tiles(rid)}
    labelers = sorted({k for v in exp.values() for k in v})
    pair_iu = {p: [np.zeros(n), np.zeros(n)] for p in itertools.combinations(labelers, 2)}
    rev_iu = {k: [np.zeros(n), np.zeros(n)] for k in labelers}
    for tile, masks in sorted(exp.items()):
        arrays = {k: np.minimum(_read(p), n - 1) if kind == "superstructures" else outline_to_roof(_read(p), "rid")
                  for k, p in masks.items()}
        for a, b in pair_iu:
            if a in arrays and b in arrays:
                i, u = _iu(arrays[a], arrays[b], n)
                pair_iu[(a, b)][0] += i
                pair_iu[(a, b)][1] += u
        rev = reviewed.get(tile)
        if rev is not None:
            r = _read(rev)
            r = np.minimum(r, n - 1) if kind == "superstructures" else outline_to_roof(r, "rid")
            for k, arr in arrays.items():
                i, u = _iu(arr, r, n)
                rev_iu[k][0] += i
                rev_iu[k][1] += u

    def summarise(groups: dict) -> dict[str, dict[str, float]]:
        out = {}
        for c, name in enumerate(names):
            vals = [i[c] / u[c] for i, u in groups.values() if u[c] > 0]
            if vals:
                out[name] = {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals))}
        return out

    pairwise, vs_rev = summarise(pair_iu), summarise(rev_iu)
    fg = [c for c in names if c not in ("background", "not_roof")]

    def miou(table: dict) -> float | None:
        vals = [table[c]["mean"] for c in fg if c in table]
        return float(np.mean(vals)) if vals else None

    return {"kind": kind, "classes": list(names), "tiles": len(exp), "labelers": labelers,
            "pairwise": pairwise, "vs_reviewed": vs_rev,
            "pairwise_miou": miou(pairwise), "vs_reviewed_miou": miou(vs_rev)}


def format_table(result: dict[str, Any], model_iou: dict[str, float] | None = None) -> str:
    """A text table: class, labeler-pair IoU, labeler-vs-reviewed IoU (and the model's IoU)."""
    head = f"{'class':<12}{'labelers':>10}{'vs_review':>10}" + (f"{'model':>8}" if model_iou is not None else "")
    lines = [head]
    for c in result["classes"]:
        pw, vr = result["pairwise"].get(c, {}).get("mean"), result["vs_reviewed"].get(c, {}).get("mean")
        row = f"{c:<12}{'' if pw is None else f'{pw:.3f}':>10}{'' if vr is None else f'{vr:.3f}':>10}"
        if model_iou is not None:
            m = model_iou.get(c)
            row += f"{'' if m is None else f'{m:.3f}':>8}"
        lines.append(row)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``roofseg-agreement`` (0 ok, 2 bad flags, 1 missing data)."""
    p = ArgumentParser(prog="roofseg-agreement", description=__doc__.splitlines()[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="RID root (with annotation_experiment/) or its parent")
    p.add_argument("--kind", choices=("superstructures", "outlines"), default="superstructures")
    p.add_argument("--out", default=None, help="also write agreement.csv here")

    def run() -> int:
        args = p.parse_args(argv)
        if not Path(args.data).exists():
            raise ConfigError(f"--data {args.data}: folder not found")
        result = agreement(args.data, args.kind)
        print(format_table(result))
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            with open(out / f"agreement_{args.kind}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["class", "pairwise_mean", "pairwise_min", "pairwise_max", "vs_reviewed_mean"])
                for c in result["classes"]:
                    pw = result["pairwise"].get(c, {})
                    w.writerow([c, pw.get("mean"), pw.get("min"), pw.get("max"),
                                result["vs_reviewed"].get(c, {}).get("mean")])
        print(json.dumps(result))
        return 0

    return run_cli(run, prog="roofseg-agreement", user_errors=(DataError,))


if __name__ == "__main__":
    raise SystemExit(main())

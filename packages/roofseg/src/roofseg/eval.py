"""``roofseg-eval --checkpoint PATH --data PATH [--split val]``: a checkpoint's metrics on a split.

Runs the training step and :class:`~roofseg.metrics.RoofMetrics` through
``mlcore.trainer.evaluate_model`` on the checkpoint's task and image size. When the data holds
RID's annotation experiment, the model's per-class superstructure IoU (and outline IoU) is
printed beside the annotators' agreement (:mod:`roofseg.agreement`): a table on stdout, then one
JSON object on the last line (DESIGN contract). ``--out DIR`` also writes ``metrics.json`` and
``eval_examples.png``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlcore  # noqa: F401
from mlcore import make_loader
from mlcore.checkpoint import check_architectures, load_checkpoint
from mlcore.cli import ArgumentParser, run_cli
from mlcore.config import ConfigError
from mlcore.devices import build_strategy
from mlcore.pretrained import normalization
from mlcore.runlog import write_json_atomic
from mlcore.trainer import evaluate_model
from roofseg.agreement import agreement, format_table
from roofseg.config import eval_image_size
from roofseg.data import DataError, RoofDataset, find_samples
from roofseg.data.rid import SUPERSTRUCTURE_CLASSES, annotation_experiment, find_rid_root
from roofseg.data.sources import TASK_HEADS
from roofseg.losses import RoofLoss
from roofseg.metrics import RoofMetrics
from roofseg.models import RoofNet
from roofseg.train import make_step


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "val", *, device: str = "cpu",
                        batch_size: int = 4, num_workers: int = 0, limit: int | None = None,
                        out_dir: Path | None = None) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``split`` of ``data`` (split settings from the checkpoint's config).

    Returns:
        ``{"checkpoint", "task", "split", "n_samples", "loss", <metrics>..., "agreement": {...}}``;
        ``agreement`` (RID only) holds per-class ``{"model", "labelers", "vs_reviewed"}`` rows.

    Raises:
        DataError: not a roofseg checkpoint, or no labelled sample of ``split`` under ``data``.
    """
    ckpt = load_checkpoint(checkpoint, expect_domain="roofseg")
    cfg = ckpt.get("config") or {}
    if "task" not in cfg:
        raise DataError(f"{checkpoint}: not a roofseg checkpoint (no task in its config)")
    task, sectors = cfg["task"], int(cfg.get("sectors", 16))
    heads = TASK_HEADS[task]
    samples = find_samples(data, split, task, sectors=sectors, val_fraction=cfg.get("val_fraction", 0.2),
                           test_fraction=cfg.get("test_fraction", 0.0), seed=cfg.get("seed", 0),
                           lines_limit=cfg.get("lines_limit"),
                           sources=tuple(cfg["sources"].split(",")) if cfg.get("sources") else None,
                           roof_label=cfg.get("roof_label", "outlines"),
                           solarnet_superstructures=cfg.get("solarnet_superstructures", "off"),
                           rid_split_fold=int(cfg.get("rid_split_fold", 1)))
    if limit:
        samples = samples[:limit]
    model = RoofNet(heads, cfg.get("encoder", "efficientnet-lite0"), None, sectors)
    check_architectures(ckpt, model, name=f"--checkpoint {checkpoint}")  # efficientnet_lite0 vs tf_efficientnet_lite0
    model.load_state_dict(ckpt["model"])
    mean, std = normalization(model)  # the encoder's data config, as in training
    ds = RoofDataset(samples, heads, eval_image_size(int(cfg.get("image_size", 512)), cfg.get("crop_size")),
                     train=False, sectors=sectors, line_width=int(cfg.get("line_width", 3)), mean=mean, std=std)
    strategy = build_strategy(device, "fp32")
    model = strategy.prepare_model(model)
    weights = {h: float(cfg.get(f"w_{h}", 1.0)) for h in heads}
    sw = cfg.get("sup_class_weights") or "none"
    step = make_step(RoofLoss(weights, line_pos_weight=float(cfg.get("line_pos_weight", 10.0)),
                              superstructure_class_weights=None if sw in ("none", "auto") else
                              [float(v) for v in sw.split(",")],
                              superstructure_focal_gamma=float(cfg.get("sup_focal_gamma", 0.0))).to(strategy.device))
    loader = make_loader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    metrics = evaluate_model(model, loader, step, [RoofMetrics(heads, sectors, int(cfg.get("tolerance", 3)))],
                             strategy, desc="eval")
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "task": task, "split": split,
                              "n_samples": len(ds), **metrics}
    rid = find_rid_root(data)
    split_tiles = [s.name for s in samples if s.source == "rid"]
    exp_sup = set(annotation_experiment(rid, "masks_superstructures")) & set(split_tiles) if rid else set()
    exp_out = set(annotation_experiment(rid, "roof_outlines")) & set(split_tiles) if rid else set()
    exp_tiles = exp_sup | exp_out
    if rid is not None and exp_tiles:
        # the annotators' agreement on the same tiles the model is scored on
        table: dict[str, Any] = {"tiles": sorted(exp_tiles)}
        if "superstructures" in heads and exp_sup:
            ag = agreement(rid, "superstructures", tiles=split_tiles)
            model_iou = {c: metrics.get(f"superstructures_iou_{c}") for c in SUPERSTRUCTURE_CLASSES}
            print(format_table(ag, model_iou))
            table["superstructures"] = {c: {"model": model_iou.get(c), "labelers": ag["pairwise"].get(c, {}).get("mean"),
                                            "vs_reviewed": ag["vs_reviewed"].get(c, {}).get("mean")}
                                        for c in SUPERSTRUCTURE_CLASSES}
            table["superstructures_miou_fg"] = {"model": metrics.get("superstructures_miou_fg"),
                                                "labelers": ag["pairwise_miou"], "vs_reviewed": ag["vs_reviewed_miou"]}
        if "outline" in heads and exp_out:
            ag = agreement(rid, "outlines", tiles=split_tiles)
            table["outline_iou"] = {"model": metrics.get("outline_iou"),
                                    "labelers": ag["pairwise"].get("roof", {}).get("mean"),
                                    "vs_reviewed": ag["vs_reviewed"].get("roof", {}).get("mean")}
            print(f"outline IoU: model {metrics.get('outline_iou', float('nan')):.3f}, labelers "
                  f"{table['outline_iou']['labelers']:.3f}, labelers vs reviewed {table['outline_iou']['vs_reviewed']:.3f}")
        result["agreement"] = table
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / "metrics.json", result)
        from roofseg.predict import save_val_examples

        save_val_examples(model, ds, out_dir / "eval_examples.png", n=4, device=strategy.device, sectors=sectors)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``roofseg-eval`` (0 ok, 2 bad flags, 1 bad data or checkpoint)."""
    p = ArgumentParser(prog="roofseg-eval", description=__doc__.splitlines()[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="roofseg-train checkpoint (best_*.pt or last.pt)")
    p.add_argument("--data", required=True, help="dataset root (or a folder of roots)")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="val")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps", "auto"))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples of the split")
    p.add_argument("--out", default=None, help="also write metrics.json and eval_examples.png here")

    def run() -> int:
        args = p.parse_args(argv)
        if not Path(args.data).exists():
            raise ConfigError(f"--data {args.data}: folder not found")
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {args.batch_size})")
        result = evaluate_checkpoint(args.checkpoint, args.data, args.split, device=args.device,
                                     batch_size=args.batch_size, num_workers=args.num_workers, limit=args.limit,
                                     out_dir=Path(args.out) if args.out else None)
        print(json.dumps(result))
        return 0

    return run_cli(run, prog="roofseg-eval", user_errors=(DataError,))


if __name__ == "__main__":
    raise SystemExit(main())

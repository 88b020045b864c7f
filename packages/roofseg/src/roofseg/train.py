"""``roofseg-train``: train roof outline / superstructure / segment / line heads with mlcore.

Writes the mlcore run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/last.pt
and best_<metric>.pt, TensorBoard) plus ``val_examples.png``. Under SageMaker (``SM_*``
variables, see :mod:`roofseg.sagemaker`) it reads the train channel and exports to ``SM_MODEL_DIR``.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mlcore  # noqa: F401  (allocator environment before torch initialises a device)
from mlcore import Trainer, make_loader
from mlcore.checkpoint import load_checkpoint
from mlcore.cli import train_main
from mlcore.pretrained import normalization
from mlcore.runlog import write_json_atomic
from mlcore.seed import seed_everything
from mlcore.trainer import evaluate_model
from roofseg.agreement import agreement
from roofseg.config import RoofSegConfig
from roofseg.data import DataError, RoofDataset, find_samples
from roofseg.data.dataset import load_index_mask, solarnet_channels
from roofseg.data.rid import SUPERSTRUCTURE_CLASSES
from roofseg.data.splits import rid_split
from roofseg.losses import RoofLoss
from roofseg.metrics import RoofMetrics
from roofseg.models import RoofNet, load_weights
from roofseg.sagemaker import sagemaker_args

log = logging.getLogger("roofseg.train")


def make_step(loss_fn: RoofLoss):
    """``step(model, batch) -> {"loss": scalar, "logits": {head: (N, C, H, W) logits}}`` (loss: :class:`RoofLoss`)."""

    def step(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        logits = model(batch["image"])
        total, _ = loss_fn(logits, batch)
        return {"loss": total, "logits": logits}

    return step


def build_model(cfg: RoofSegConfig, *, resume: bool = False) -> RoofNet:
    """The configured :class:`RoofNet` (no hub download when resuming or loading ``--weights``).

    Raises:
        OSError: ImageNet weights could not be downloaded (one line naming the offline options).
    """
    init = None if (resume or cfg.weights) else cfg.encoder_init()
    try:
        model = RoofNet(cfg.heads(), cfg.encoder, init, cfg.sectors)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise OSError(f"--encoder-weights {cfg.encoder_weights}: cannot download ImageNet weights for "
                      f"--encoder {cfg.encoder} (offline?); use --encoder efficientnet-lite0 "
                      f"--encoder-weights offline, --no-pretrained or --weights PATH") from exc
    if cfg.weights:
        model.weights_report = load_weights(model, cfg.weights)
    return model


def split_samples(cfg: RoofSegConfig, split: str):
    """Samples of ``split`` for ``cfg`` (see :func:`roofseg.data.find_samples`)."""
    return find_samples(cfg.data, split, cfg.task, sectors=cfg.sectors, val_fraction=cfg.val_fraction,
                        test_fraction=cfg.test_fraction, seed=cfg.seed, lines_limit=cfg.lines_limit,
                        sources=cfg.source_list(), roof_label=cfg.roof_label,
                        solarnet_superstructures=cfg.solarnet_superstructures, rid_split_fold=cfg.rid_split_fold)


def train(cfg: RoofSegConfig) -> dict[str, Any]:
    """Train with ``cfg`` and return the run summary (``summary.json``).

    Raises:
        DataError: no dataset layout / no labelled sample under ``cfg.data``, or an unreadable file.
    """
    seed_everything(cfg.seed)
    heads = cfg.heads()
    if cfg.solarnet_superstructures == "inferred" and "superstructures" in heads:
        log.warning("--solarnet-superstructures inferred: training on SolarNet+'s superstructure channel with a "
                    "class order read off the sample masks (not published by its authors)")
    train_samples, val_samples = split_samples(cfg, "train"), split_samples(cfg, "val")
    try:
        test_samples = split_samples(cfg, "test")
    except DataError:
        test_samples = []
    if cfg.max_samples:
        train_samples, val_samples = train_samples[: cfg.max_samples], val_samples[: cfg.max_samples]
    log.info("task %s (heads %s), data %s: %d train, %d val samples", cfg.task, ",".join(heads), cfg.data,
             len(train_samples), len(val_samples))
    trained = [h for h in heads if any(s.has(h, cfg.sectors) for s in train_samples)]
    if set(trained) != set(heads):
        log.warning("heads without any labelled training sample (not emitted by roofseg-predict): %s",
                    ", ".join(h for h in heads if h not in trained))
    cfg.trained_heads = ",".join(trained)
    model = build_model(cfg, resume=bool(cfg.resume))
    mean, std = normalization(model)  # the encoder's data config (issue 17), not ImageNet's constants
    ds_kw = dict(sectors=cfg.sectors, line_width=cfg.line_width, mean=mean, std=std)
    train_ds = RoofDataset(train_samples, heads, cfg.image_size, train=True, crop_size=cfg.crop_size,
                           superstructure_crops=cfg.superstructure_crops, **ds_kw)
    val_ds = RoofDataset(val_samples, heads, cfg.eval_image_size(), train=False, **ds_kw)
    if "superstructures" in heads and cfg.sup_class_weights == "auto":
        w = superstructure_class_weights(train_samples)
        cfg.sup_class_weights = ",".join(f"{v:.4g}" for v in w)
        log.info("--sup-class-weights auto: %s", cfg.sup_class_weights)
    loader_kw = dict(num_workers=cfg.num_workers, seed=cfg.seed)
    train_loader = make_loader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_ds) > cfg.batch_size,
                               **loader_kw)
    val_loader = make_loader(val_ds, batch_size=cfg.batch_size, shuffle=False, **loader_kw)

    step = make_step(RoofLoss(cfg.loss_weights(), line_pos_weight=cfg.line_pos_weight,
                              superstructure_class_weights=cfg.sup_weights(),
                              superstructure_focal_gamma=cfg.sup_focal_gamma))
    trainer = Trainer(model, cfg, step, metrics=[RoofMetrics(heads, cfg.sectors, cfg.tolerance)])
    if trainer.logger.enabled:
        write_json_atomic(trainer.run_dir / "split.json", split_record(cfg, train_samples, val_samples, test_samples))
    try:
        summary = trainer.fit(train_loader, val_loader)
    except DataError as exc:
        # a worker's error arrives wrapped in a traceback text; its last line names the file
        raise DataError(str(exc).strip().splitlines()[-1].removeprefix("roofseg.data.rid.DataError: ")) from None
    summary["task"] = cfg.task
    summary["trained_heads"] = trained
    if getattr(model, "weights_report", None):
        summary["weights"] = model.weights_report
    summary["data"] = {"root": cfg.data, "train": len(train_samples), "val": len(val_samples),
                       "test": len(test_samples), "sources": sorted({s.source for s in train_samples})}
    if test_samples:  # every rank under torchrun: evaluate_model sums the ranks' shards of the test split
        summary["test"] = evaluate_test(cfg, trainer, step, test_samples)
        log.info("test (%d tiles, %s, reported only): %s", len(test_samples), summary["test"]["checkpoint"],
                 {k: round(v, 4) for k, v in summary["test"].items() if isinstance(v, float)})
    trainer.logger.write_summary(summary)
    if cfg.examples and len(val_ds):
        from roofseg.predict import save_val_examples

        model_eval = trainer.eval_module()  # every rank: under FSDP it gathers a full copy on rank 0
        if trainer.logger.enabled:
            save_val_examples(model_eval, val_ds, trainer.run_dir / "val_examples.png", n=cfg.examples,
                              device=next(model_eval.parameters()).device, sectors=cfg.sectors)
    if cfg.export_dir and trainer.logger.enabled:
        export_run(trainer.run_dir, Path(cfg.export_dir), cfg.monitor)
    trainer.close()
    return summary


def split_record(cfg: RoofSegConfig, train_s, val_s, test_s) -> dict[str, Any]:
    """``split.json``: ``{"train": [ids], "val": [ids], "test": [ids], ...}``; RID tiles by tile id,
    other sources as ``source:name``; ``rid_method`` says how RID was split (:mod:`roofseg.data.splits`)."""
    def ids(samples) -> list[str]:
        return [s.name if s.source == "rid" else f"{s.source}:{s.name}" for s in samples]

    out: dict[str, Any] = {"train": ids(train_s), "val": ids(val_s), "test": ids(test_s)}
    rid = next((s.rid_root or s.image.parent.parent for s in [*train_s, *val_s, *test_s] if s.source == "rid"), None)
    if rid is not None:
        info = rid_split(rid, cfg.val_fraction, cfg.test_fraction, cfg.seed, cfg.rid_split_fold)
        out["rid_method"] = info["method"]
        out["rid_excluded"] = info["excluded"]
    return out


def evaluate_test(cfg: RoofSegConfig, trainer: Trainer, step, test_samples) -> dict[str, Any]:
    """Metrics of the best checkpoint (selected on val; else ``last.pt`` or an FSDP run's ``last.dcp``)
    on the test samples: the reported figures, never used for selection.

    Called on every rank under ``torchrun``: each rank scores its shard of the test tiles (the
    loader's sampler) and :func:`mlcore.trainer.evaluate_model` all-reduces the loss and the
    metric states (confusion matrices, pixel counts) before computing them, so every rank returns
    the same figures. Calling it on rank 0 alone would block rank 0 in that all-reduce.
    """
    from mlcore.checkpoint import resolve_resume_path
    from mlcore.dcp import load_resume_state
    from mlcore.distributed import barrier

    barrier()  # under torchrun: rank 0 has finished writing the checkpoints
    ckpt_path = trainer.run_dir / "checkpoints" / f"best_{cfg.monitor}.pt"
    model = RoofNet(cfg.heads(), cfg.encoder, None, cfg.sectors)
    if ckpt_path.is_file():
        model.load_state_dict(load_checkpoint(ckpt_path, expect_domain="roofseg")["model"])
    else:  # last.pt, or an FSDP run's sharded last.dcp
        ckpt_path = resolve_resume_path(trainer.run_dir)
        load_resume_state(ckpt_path, model, expect_domain="roofseg")
    model = trainer.strategy.prepare_model(model)
    mean, std = normalization(model)
    ds = RoofDataset(test_samples, cfg.heads(), cfg.eval_image_size(), train=False, sectors=cfg.sectors,
                     line_width=cfg.line_width, mean=mean, std=std)
    loader = make_loader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=0)
    metrics = evaluate_model(model, loader, step, [RoofMetrics(cfg.heads(), cfg.sectors, cfg.tolerance)],
                             trainer.strategy, desc="test")
    out: dict[str, Any] = {"checkpoint": ckpt_path.name, "n_samples": len(ds), **metrics}
    rid = next((s.image.parent.parent for s in test_samples if s.source == "rid"), None)
    if rid is not None and "superstructures" in cfg.heads() and (rid / "annotation_experiment").is_dir():
        names = [s.name for s in test_samples if s.source == "rid"]
        try:
            ag = agreement(rid, "superstructures", tiles=names)
        except DataError:  # no annotation-experiment tile among the test tiles
            ag = None
        if ag is not None:
            out["agreement"] = {"tiles": ag["tiles"], "classes": {
                c: {"model": metrics.get(f"superstructures_iou_{c}"),
                    "labelers": ag["pairwise"].get(c, {}).get("mean"),
                    "vs_reviewed": ag["vs_reviewed"].get(c, {}).get("mean")} for c in SUPERSTRUCTURE_CLASSES}}
    return out


def superstructure_class_weights(samples, n: int = 9, lo: float = 0.1, hi: float = 10.0) -> list[float]:
    """``--sup-class-weights auto``: ``sqrt(median frequency / frequency)`` per class over the training
    samples' superstructure masks (native resolution; classes with no pixel get 1), clipped to
    [``lo``, ``hi``]."""
    counts = np.zeros(n, np.float64)
    for s in samples:
        if s.superstructures is None:
            continue
        m = load_index_mask(s.superstructures)
        if s.source == "solarnet":
            m = solarnet_channels(m, s.superstructures, "inferred")[2]
        counts += np.bincount(m[m < n].ravel(), minlength=n)[:n]
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    if not present.any():
        return [1.0] * n
    med = float(np.median(freq[present]))
    w = np.ones(n)
    w[present] = np.clip(np.sqrt(med / freq[present]), lo, hi)
    return [float(v) for v in w]


def export_run(run_dir: Path, export_dir: Path, monitor: str) -> Path:
    """Copy ``best_<monitor>.pt`` (or ``last.pt``), ``config.yaml`` and ``summary.json`` to ``export_dir``
    (SageMaker's model directory); returns the copied checkpoint's path."""
    export_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "checkpoints" / f"best_{monitor}.pt"
    if not ckpt.is_file():
        ckpt = run_dir / "checkpoints" / "last.pt"
    dst = export_dir / "model.pt"
    shutil.copy2(ckpt, dst)
    for name in ("config.yaml", "summary.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, export_dir / name)
    write_json_atomic(export_dir / "export.json", {"checkpoint": str(ckpt), "monitor": monitor})
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``roofseg-train`` (exit 0 ok, 2 bad flags, 1 bad data or weights unavailable)."""
    typed = list(sys.argv[1:] if argv is None else argv)
    try:
        sm = sagemaker_args()
    except ValueError as exc:
        print(f"roofseg-train: error: {exc}", file=sys.stderr)
        return 2
    return train_main(RoofSegConfig, train, sm + typed, prog="roofseg-train", presets_package="roofseg",
                      description="Train roof outline / superstructure / segment / line models with mlcore.",
                      summary_keys=("task", "best", "final", "steps", "epochs", "samples_per_s", "wall_time_s"),
                      user_errors=(DataError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())

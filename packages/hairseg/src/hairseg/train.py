"""``hairseg-train``: finetune a U-Net on Figaro-1k (or an images/ + masks/ folder) with mlcore.

Writes the mlcore run directory (config.yaml, metrics.jsonl, summary.json with the seed's IoU
verdict, checkpoints/last.pt and best_val_iou.pt, TensorBoard) plus ``val_examples.png`` and
``split.json`` (the photo names of train / val / test). Three splits: train, val (checkpoint
selection, early stopping, preset tuning) and test (reported only: ``summary.json["test"]`` is the
val-selected checkpoint scored on it at the training size; ``hairseg-eval --split test`` scores it at
full resolution).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import mlcore  # noqa: F401  (sets allocator environment variables before torch initialises a device)
from hairseg.config import HairSegConfig
from hairseg.data import DataError, HairSample, HairSegDataset, find_samples
from hairseg.losses import BceDiceLoss
from hairseg.metrics import HairSegMetrics, verdict
from hairseg.models import build_model, normalization
from mlcore import Trainer, make_loader
from mlcore.cli import train_main
from mlcore.data import write_split_json
from mlcore.seed import seed_everything

log = logging.getLogger("hairseg.train")


def make_step(loss_fn: torch.nn.Module):
    """``step(model, batch) -> {"loss", "logits"}`` for batches of ``{"image": (N,3,S,S), "mask": (N,1,S,S)}``."""

    def step(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(batch["image"])
        return {"loss": loss_fn(logits.float(), batch["mask"]), "logits": logits}

    return step


def train(cfg: HairSegConfig) -> dict[str, Any]:
    """Train with ``cfg`` and return the run summary (``summary.json``).

    Raises:
        DataError: no dataset layout under ``cfg.data`` or a mask that does not match its image.
    """
    seed_everything(cfg.seed)
    split = dict(val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed)
    train_samples = find_samples(cfg.data, "train", **split)
    val_samples = find_samples(cfg.data, "val", **split)
    test_samples = find_samples(cfg.data, "test", **split)
    log.info("data %s: %d train, %d val, %d test samples", cfg.data, len(train_samples), len(val_samples),
             len(test_samples))
    mean, std = normalization(cfg.encoder)  # the encoder's own data config (issue 17), not ImageNet's
    log.info("normalisation of %s: mean %s, std %s", cfg.encoder, [round(v, 4) for v in mean],
             [round(v, 4) for v in std])
    norm = dict(mean=mean, std=std)
    train_ds = HairSegDataset(train_samples, cfg.image_size, train=True, cache_dir=cfg.cache_dir, **norm)
    val_ds = HairSegDataset(val_samples, cfg.image_size, train=False, cache_dir=cfg.cache_dir, **norm)
    loader_kw = dict(num_workers=cfg.num_workers, seed=cfg.seed)
    train_loader = make_loader(train_ds, batch_size=cfg.batch_size, shuffle=True, **loader_kw)
    val_loader = make_loader(val_ds, batch_size=cfg.batch_size, shuffle=False, **loader_kw)

    # a resumed run takes every weight from last.pt, --weights from that file: no hub download (works offline)
    encoder_init = None if (cfg.resume or cfg.weights) else cfg.encoder_init()
    try:
        model = build_model(cfg.encoder, encoder_init, freeze_encoder=cfg.freeze_encoder, weights=cfg.weights,
                            decoder_channels=cfg.decoder_channels)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise OSError(f"--encoder-weights {cfg.encoder_weights}: cannot download ImageNet weights for "
                      f"--encoder {cfg.encoder} (offline?); use --no-pretrained, --encoder efficientnet-lite0 "
                      f"--encoder-weights offline (the default; --config seed asks for the hub) or --weights PATH"
                      ) from exc
    step = make_step(BceDiceLoss(pos_weight=cfg.pos_weight))
    trainer = Trainer(model, cfg, step, metrics=[HairSegMetrics()])
    if trainer.logger.enabled:
        write_split(trainer.run_dir / "split.json", cfg, train_samples, val_samples, test_samples)
    summary = trainer.fit(train_loader, val_loader)
    best = summary["best"].get("val_iou")
    summary["verdict"] = verdict(best["value"]) if best else None
    summary["data"] = {"root": cfg.data, "train": len(train_samples), "val": len(val_samples),
                       "test": len(test_samples)}
    if test_samples:  # every rank under torchrun: evaluate_model sums the ranks' shards of the test split
        summary["test"] = evaluate_test(cfg, trainer, step, test_samples)
        log.info("test (%d photos, %s, reported only): %s", len(test_samples), summary["test"]["checkpoint"],
                 {k: round(v, 4) for k, v in summary["test"].items() if isinstance(v, float)})
    trainer.logger.write_summary(summary)
    if cfg.examples and len(val_ds):
        from hairseg.viz import save_examples

        model_eval = trainer.eval_module()  # every rank: under FSDP it gathers a full copy on rank 0
        if trainer.logger.enabled:
            save_examples(model_eval, val_ds, trainer.run_dir / "val_examples.png", n=cfg.examples,
                          device=next(model_eval.parameters()).device)
    trainer.close()
    return summary


def write_split(path: str | Path, cfg: HairSegConfig, train_s: list[HairSample], val_s: list[HairSample],
                test_s: list[HairSample]) -> Path:
    """Write ``split.json`` (:func:`mlcore.data.write_split_json`, the layout every domain writes): the photo
    paths of each split (relative to ``--data``; the mask follows from the layout), their counts and how they
    were drawn (seed, fractions, where test came from)."""
    testing = any(s.image.parent.name == "Testing" for s in test_s)
    return write_split_json(
        path, {"train": [s.image for s in train_s], "val": [s.image for s in val_s], "test": [s.image for s in test_s]},
        root=Path(cfg.data).expanduser(), seed=cfg.seed, val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        test_source="Figaro-1k Testing folder (official)" if testing else "carved from the training photos by seed")


def evaluate_test(cfg: HairSegConfig, trainer: Trainer, step, test_samples: list[HairSample]) -> dict[str, Any]:
    """The val-selected checkpoint (``best_val_iou.pt``, else ``last.pt``) on the test photos, at the training
    size: the reported figure (never used for selection)."""
    from mlcore.checkpoint import load_checkpoint, resolve_resume_path
    from mlcore.dcp import load_resume_state
    from mlcore.distributed import barrier
    from mlcore.trainer import evaluate_model

    barrier()  # under torchrun: rank 0 has finished writing the checkpoints
    ckpt_path = trainer.run_dir / "checkpoints" / f"best_{cfg.monitor}.pt"
    model = build_model(cfg.encoder, decoder_channels=cfg.decoder_channels)
    if ckpt_path.is_file():
        model.load_state_dict(load_checkpoint(ckpt_path, expect_domain="hairseg")["model"])
    else:  # last.pt, or an FSDP run's sharded last.dcp
        ckpt_path = resolve_resume_path(trainer.run_dir)
        load_resume_state(ckpt_path, model, expect_domain="hairseg")
    model = trainer.strategy.prepare_model(model)
    mean, std = normalization(cfg.encoder)
    ds = HairSegDataset(test_samples, cfg.image_size, train=False, cache_dir=cfg.cache_dir, mean=mean, std=std)
    loader = make_loader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=0)
    metrics = evaluate_model(model, loader, step, [HairSegMetrics()], trainer.strategy, desc="test")
    return {"checkpoint": ckpt_path.name, "n_images": len(ds),
            **{k: v for k, v in metrics.items() if not k.endswith("_per_image")}}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``hairseg-train`` (exit 0 ok, 2 bad flags, 1 bad data or weights unavailable)."""
    return train_main(HairSegConfig, train, argv, prog="hairseg-train", presets_package="hairseg",
                      description="Finetune a hair-segmentation U-Net (Figaro-1k) with mlcore.",
                      summary_keys=("best", "test", "verdict", "steps", "epochs", "samples_per_s", "wall_time_s"),
                      user_errors=(DataError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())

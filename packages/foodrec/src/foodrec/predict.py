"""``foodrec-predict IMAGE... --checkpoint PATH [--top-k 5]``: the top-k dishes per photo with probabilities.

Labels are the human-readable names of ``labels.txt``, read from the run's ``label_mapping.json``
(next to ``checkpoints/``) or from ``--labels FILE``. One JSON object per photo on stdout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from foodrec.data import DataError, eval_transform, load_image
from foodrec.models import build_model
from mlcore.checkpoint import CheckpointError, load_checkpoint
from mlcore.cli import ArgumentParser, run_cli
from mlcore.config import ConfigError
from mlcore.reports import load_label_names, top_k_labels


@torch.inference_mode()
def predict(model: torch.nn.Module, images: Sequence[Path], labels: Sequence[str], size: int,
            top_k: int = 5) -> list[dict]:
    """Top-k ``[{"image", "top": [{"label", "probability"}, ...]}]`` (softmax probabilities, descending)."""
    model.eval()
    transform = eval_transform(size)
    results = []
    for path in images:
        x = transform(load_image(path)).as_subclass(torch.Tensor).unsqueeze(0)
        results.append({"image": str(path), "top": top_k_labels(model(x)[0], labels, top_k)})
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``foodrec-predict``: exit 0 ok, 2 bad flags, 1 unreadable image or checkpoint."""
    p = ArgumentParser(prog="foodrec-predict", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", help="photos (JPEG/PNG)")
    p.add_argument("--checkpoint", required=True, help="best_*.pt / last.pt written by foodrec-train")
    p.add_argument("--labels", default=None, help="label_mapping.json or labels.txt (default: the run's)")
    p.add_argument("--top-k", type=int, default=5)

    def run() -> int:
        args = p.parse_args(argv)
        if args.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1 (got {args.top_k})")
        ckpt_path = Path(args.checkpoint)
        ckpt = load_checkpoint(ckpt_path, expect_domain="foodrec")
        cfg = ckpt.get("config") or {}
        if "backbone" not in cfg:
            raise CheckpointError(f"{ckpt_path}: no foodrec config (expected a checkpoint from foodrec-train)")
        labels = load_label_names(ckpt_path, args.labels)
        model = build_model(cfg["backbone"], num_classes=len(labels), pretrained=None)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{ckpt_path}: weights do not match {len(labels)} labels") from exc
        for row in predict(model, [Path(i) for i in args.images], labels, cfg.get("image_size", 300), args.top_k):
            print(json.dumps(row))
        return 0

    return run_cli(run, prog="foodrec-predict", user_errors=(DataError, CheckpointError))


if __name__ == "__main__":
    raise SystemExit(main())

"""``plantid-predict IMAGE... --checkpoint PATH [--top-k 5]``: the top-k species per photo with probabilities.

Names come from the run's ``label_mapping.json`` (next to ``checkpoints/``) or ``--labels FILE``. One JSON
object per photo on stdout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from mlcore.checkpoint import CheckpointError
from mlcore.cli import ArgumentParser, run_cli
from mlcore.config import ConfigError
from mlcore.reports import load_label_names, top_k_labels
from plantid.augment import DeviceNormalize
from plantid.data import DataError, load_image
from plantid.eval import model_from_checkpoint, preprocess


@torch.inference_mode()
def predict(model: torch.nn.Module, images: Sequence[Path], labels: Sequence[str], cfg: dict, top_k: int = 5
            ) -> list[dict]:
    """``[{"image", "top": [{"label", "probability"}, ...]}]`` per image, softmax probabilities descending.

    Raises ``DataError`` for an unreadable image (naming it).
    """
    model.eval()
    transform, normalize = preprocess(cfg), DeviceNormalize()
    results = []
    for path in images:
        x = transform(load_image(path)).as_subclass(torch.Tensor).unsqueeze(0)
        if x.dtype == torch.uint8:
            x = normalize(x)
        results.append({"image": str(path), "top": top_k_labels(model(x)[0], labels, top_k)})
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``plantid-predict``: exit 0 ok, 2 bad flags, 1 unreadable image or checkpoint."""
    p = ArgumentParser(prog="plantid-predict", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", help="photos (JPEG/PNG)")
    p.add_argument("--checkpoint", required=True, help="best_val_top1.pt / last.pt written by plantid-train")
    p.add_argument("--labels", default=None, help="label_mapping.json or labels.txt (default: the run's)")
    p.add_argument("--top-k", type=int, default=5)

    def run() -> int:
        args = p.parse_args(argv)
        if args.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1 (got {args.top_k})")
        ckpt = Path(args.checkpoint)
        model, cfg = model_from_checkpoint(ckpt)
        labels = load_label_names(ckpt, args.labels)
        if len(labels) != model.head[-1].out_features:
            raise CheckpointError(f"{ckpt}: {model.head[-1].out_features} classes but {len(labels)} labels")
        for row in predict(model, [Path(i) for i in args.images], labels, cfg, args.top_k):
            print(json.dumps(row))
        return 0

    return run_cli(run, prog="plantid-predict", user_errors=(DataError, CheckpointError))


if __name__ == "__main__":
    raise SystemExit(main())

"""``foodrec-predict IMAGES... --checkpoint CKPT [--top-k 5] [--out preds.csv|preds.json] [--tta flip]``: the
top-k dishes per photo with probabilities, for files, folders or globs, batched; classes come from the
checkpoint (:func:`mlcore.vision.predict_main`)."""

from __future__ import annotations

from collections.abc import Sequence

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from foodrec.eval import load_classifier
from mlcore.vision import predict_main


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``foodrec-predict``: exit 0 ok, 2 bad flags or no photos, 1 unreadable photo or checkpoint."""
    return predict_main(argv, prog="foodrec-predict", load=load_classifier)


if __name__ == "__main__":
    raise SystemExit(main())

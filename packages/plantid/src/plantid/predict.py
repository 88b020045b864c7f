"""``plantid-predict IMAGES... --checkpoint CKPT [--top-k 5] [--out preds.csv|preds.json] [--tta flip]``: the
top-k species per photo with probabilities, for files, folders or globs, batched; names come from the
checkpoint (:func:`mlcore.vision.predict_main`)."""

from __future__ import annotations

from collections.abc import Sequence

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from mlcore.vision import predict_main
from plantid.eval import load_classifier


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``plantid-predict``: exit 0 ok, 2 bad flags or no photos, 1 unreadable photo or checkpoint."""
    return predict_main(argv, prog="plantid-predict", load=load_classifier)


if __name__ == "__main__":
    raise SystemExit(main())

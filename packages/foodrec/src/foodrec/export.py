"""``foodrec-export --checkpoint CKPT --out DIR``: ONNX (dynamic batch) + a JSON sidecar with the preprocessing
and classes, after a parity check against PyTorch (:func:`mlcore.vision.export_main`)."""

from __future__ import annotations

from collections.abc import Sequence

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from foodrec.eval import load_classifier
from mlcore.vision import export_main


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``foodrec-export``: exit 0 ok, 2 bad flags, 1 bad checkpoint or failed parity."""
    return export_main(argv, prog="foodrec-export", load=load_classifier, default_name="foodrec")


if __name__ == "__main__":
    raise SystemExit(main())

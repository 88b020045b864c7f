"""``plantid-export --checkpoint CKPT --out DIR``: ONNX (dynamic batch) + a JSON sidecar with the preprocessing
and species names, after a parity check against PyTorch (:func:`mlcore.vision.export_main`)."""

from __future__ import annotations

from collections.abc import Sequence

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from mlcore.vision import export_main
from plantid.eval import load_classifier


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``plantid-export``: exit 0 ok, 2 bad flags, 1 bad checkpoint or failed parity."""
    return export_main(argv, prog="plantid-export", load=load_classifier, default_name="plantid")


if __name__ == "__main__":
    raise SystemExit(main())

"""plantid: plant identification by fine-tuning DINOv2 (transformers) or EfficientNet-Lite0 (timm) on mlcore,
with on-device kornia augmentation, gradient accumulation and profiling (issue 5; plan ``../shared/seeds/004``).

Commands: ``plantid-train``, ``plantid-eval``, ``plantid-predict``, ``plantid-data``. Submodules are
imported on use (``plantid.models``, ``plantid.data``, ...); ``mlcore`` is imported first so its
environment defaults (OpenMP wait policy and threads) are set before torch initialises.
"""

from __future__ import annotations

import mlcore  # noqa: F401  (OpenMP and allocator environment variables before torch initialises)

"""foodrec: Food-101 recognition on mlcore (work in progress: data, losses and models first)."""

from __future__ import annotations

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)

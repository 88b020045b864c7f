"""videogen: text-to-video on mlcore: a 3D-conv VideoVAE, a byte-level multilingual text encoder and a
flow-matching HybridBackbone on the VAE's latents, trained through a 5-phase curriculum."""

from __future__ import annotations

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)

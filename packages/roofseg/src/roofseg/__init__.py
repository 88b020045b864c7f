"""roofseg: roof superstructures, roof segments, roof lines and outlines from aerial tiles on mlcore.

Data: RID (Krapf et al. 2022), SolarNet+ masks, roof line graphs (Hensel et al. 2021), AIRS-style
folders. Commands: ``roofseg-train``, ``roofseg-eval``, ``roofseg-predict``, ``roofseg-agreement``,
``roofseg-data``.
"""

from __future__ import annotations

import mlcore  # noqa: F401  (OpenMP and allocator environment variables before torch initialises)

"""plantid fixtures: a small ImageFolder of real Flowers photos (symlinks into tmp, nothing copied)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_flowers(flowers_root: Path, tmp_path_factory) -> Path:
    """An ImageFolder with the first 8 photos of each of the 5 Flowers classes (symlinked)."""
    root = tmp_path_factory.mktemp("flowers_small")
    for cls in sorted(p for p in flowers_root.iterdir() if p.is_dir()):
        (root / cls.name).mkdir()
        for img in sorted(cls.glob("*.jpg"))[:8]:
            (root / cls.name / img.name).symlink_to(img)
    return root

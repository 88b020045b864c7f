"""videogen test helpers: a per-session probe cache and a tiny curriculum."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def probe_cache(tmp_path_factory):
    """A fresh clip-probe cache folder shared by the session's tests (VIDEOGEN_CACHE)."""
    path = tmp_path_factory.mktemp("videogen-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("VIDEOGEN_CACHE", str(path))
    yield path
    mp.undo()


TINY_CURRICULUM = """
phases:
  - {name: p1, epochs: 1, batch_size: 2, lr: 1.0e-3, samples: 2}
  - {name: p2, epochs: 1, batch_size: 2, lr: 5.0e-4, samples: 2}
  - {name: p3, epochs: 1, batch_size: 2, lr: 2.0e-4, samples: 2}
  - {name: p4, epochs: 1, batch_size: 2, lr: 1.0e-4, samples: 2}
  - {name: p5, epochs: 1, batch_size: 2, lr: 5.0e-5, samples: 2}
"""


@pytest.fixture(scope="session")
def tiny_curriculum(tmp_path_factory):
    """A curriculum YAML with 5 one-step phases."""
    path = tmp_path_factory.mktemp("curriculum") / "tiny.yaml"
    path.write_text(TINY_CURRICULUM)
    return path

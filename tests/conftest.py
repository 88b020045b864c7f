"""Shared test fixtures: where the real sample data lives.

`MLDATA_ROOT` points at the sample data (default: `../shared/data` next to the repository). Tests
that need a dataset skip when it is absent, unless `MLDATA_REQUIRED=1` (set by `.ci/run`), in
which case a missing dataset fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    env = os.environ.get("MLDATA_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    default = REPO_ROOT.parent / "shared" / "data"
    return default if default.is_dir() else None


def require_data(*parts: str) -> Path:
    """Return `MLDATA_ROOT/<parts>`; skip (or fail under MLDATA_REQUIRED=1) when it is missing."""
    root = _data_root()
    path = root.joinpath(*parts) if root is not None else None
    if path is None or not path.exists():
        msg = f"sample data not found: {path or 'MLDATA_ROOT unset and ../shared/data absent'}"
        if os.environ.get("MLDATA_REQUIRED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def mldata_root() -> Path:
    """The sample-data root folder (`MLDATA_ROOT`)."""
    return require_data()


@pytest.fixture(scope="session")
def figaro_root() -> Path:
    """`MLDATA_ROOT/figaro1k` (contains `Figaro1k/Original`, `Figaro1k/GT`)."""
    return require_data("figaro1k")


@pytest.fixture(scope="session")
def lfw_hair_root() -> Path:
    """`MLDATA_ROOT/lfw_hair` (`images/NAME.jpg`, `masks/NAME.png`)."""
    return require_data("lfw_hair")


@pytest.fixture(scope="session")
def food101_root() -> Path:
    """`MLDATA_ROOT/food101_sample` (contains `food-101/images`, `food-101/meta`)."""
    return require_data("food101_sample")


@pytest.fixture(scope="session")
def flowers_root() -> Path:
    """`MLDATA_ROOT/flowers` (ImageFolder: `CLASS/NAME.jpg`, 5 classes, 128 px)."""
    return require_data("flowers")


@pytest.fixture(scope="session")
def rid_root() -> Path:
    """`MLDATA_ROOT/rid` (`images/`, `masks_superstructures_reviewed/`, `roof_outlines_reviewed/`,
    `annotation_experiment/`, `vector_labels/`)."""
    return require_data("rid")


@pytest.fixture(scope="session")
def rid_solarnet_root() -> Path:
    """`MLDATA_ROOT/rid_solarnet` (`SPLIT/images/X.png`, `SPLIT/masks/X.png`)."""
    return require_data("rid_solarnet")


@pytest.fixture(scope="session")
def roof_lines_root() -> Path:
    """`MLDATA_ROOT/roof_lines` (`SPLIT/NNNNNN.jpg` + `SPLIT/NNNNNN.txt` roof line graphs)."""
    return require_data("roof_lines")


@pytest.fixture(scope="session")
def videos_root() -> Path:
    """`MLDATA_ROOT/videos` (`clips/NAME.mp4`, `captions.csv`)."""
    return require_data("videos")


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """`../shared/models` (MediaPipe test model)."""
    root = _data_root()
    path = root.parent / "models" if root is not None else REPO_ROOT.parent / "shared" / "models"
    if not path.is_dir():
        if os.environ.get("MLDATA_REQUIRED") == "1":
            pytest.fail(f"shared models folder not found: {path}")
        pytest.skip(f"shared models folder not found: {path}")
    return path


@pytest.fixture
def no_network(monkeypatch):
    """No model hub and no network: every socket connection and every Hugging Face hub download raises
    (as on a fresh machine without access), so a model that would fetch weights fails loudly.

    Patched: ``socket.socket.connect``/``connect_ex``, ``socket.create_connection`` (urllib, requests,
    httpx all end there) and ``huggingface_hub.hf_hub_download``/``snapshot_download`` as imported by
    huggingface_hub, timm and segmentation_models_pytorch."""
    import importlib
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the no_network test fixture")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for module_name in ("huggingface_hub", "huggingface_hub.file_download", "timm.models._hub",
                        "segmentation_models_pytorch.encoders"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in ("hf_hub_download", "snapshot_download"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

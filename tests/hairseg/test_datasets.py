"""hairseg-data: the Figaro-1k spec downloads, extracts and verifies its layout (local HTTP server)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

import hairseg.datasets as datasets
from hairseg.data import find_samples


@pytest.fixture
def figaro_zip_server(tmp_path):
    """Serves a small zip in Figaro-1k's own layout (with the archive's __MACOSX clutter) on 127.0.0.1."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split, n in (("Training", 6), ("Testing", 2)):
            for i in range(n):
                img, gt = io.BytesIO(), io.BytesIO()
                Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(img, "JPEG")
                Image.fromarray(np.eye(24, 32, dtype=bool)).save(gt, "PPM")  # PIL writes 1-bit as PBM
                zf.writestr(f"Figaro1k/Original/{split}/Frame{i + 1:05d}-org.jpg", img.getvalue())
                zf.writestr(f"Figaro1k/GT/{split}/Frame{i + 1:05d}-gt.pbm", gt.getvalue())
        zf.writestr("__MACOSX/._junk", b"x")
    served = tmp_path / "srv"
    served.mkdir()
    (served / "Figaro1k.zip").write_bytes(buf.getvalue())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/Figaro1k.zip"
    finally:
        server.shutdown()
        server.server_close()


def test_download_figaro1k_layout(figaro_zip_server, tmp_path, monkeypatch, capsys):
    spec = datasets.REGISTRY["figaro1k"]
    local = dataclasses.replace(spec, files=(dataclasses.replace(spec.files[0], url=figaro_zip_server),))
    monkeypatch.setitem(datasets.REGISTRY, "figaro1k", local)
    target = tmp_path / "data"
    code = datasets.main(["download", "figaro1k", "--to", str(target), "--cache", str(tmp_path / "cache")])
    assert code == 0
    assert str(target) in capsys.readouterr().out
    assert len(find_samples(target, "train", val_fraction=1 / 3)) == 4
    assert len(find_samples(target, "test")) == 2
    assert (target / ".mlcore-figaro1k.json").is_file()


def test_unknown_dataset_and_list(capsys):
    assert datasets.main(["list"]) == 0
    assert "figaro1k" in capsys.readouterr().out
    assert datasets.main(["download", "celeba", "--to", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "celeba" in err[0]


def test_spec_matches_the_official_layout():
    spec = datasets.REGISTRY["figaro1k"]
    assert spec.files[0].filename == "Figaro1k.zip"
    assert set(spec.layout) == {f"Figaro1k/{k}/{s}" for k in ("Original", "GT") for s in ("Training", "Testing")}

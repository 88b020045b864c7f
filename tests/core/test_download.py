"""Tests for mlcore.download and mlcore.datacli against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import pytest

from mlcore.datacli import make_data_main
from mlcore.download import DatasetSpec, DownloadError, RemoteFile, download_dataset, download_file

# Incompressible payload so the archives are a few hundred KiB and "half the bytes" is meaningful.
PAYLOAD = hashlib.sha256(b"seed").digest() * 8192  # 256 KiB


@dataclass
class ServerState:
    """Knobs and a request log shared between the test and the handler."""

    ignore_range: bool = False
    truncate_once: set[str] = field(default_factory=set)  # paths whose first GET is cut in half
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # (path, Range, status)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus `Range: bytes=N-` -> 206 (the stdlib handler ignores Range)."""

    state: ServerState

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.state.requests.append((self.path, self.headers.get("Range"), 404))
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        start = 0
        if rng and not self.state.ignore_range:
            start = int(rng.removeprefix("bytes=").removesuffix("-"))
        if start >= len(data) and start > 0:
            self.state.requests.append((self.path, rng, 416))
            self.send_error(416)
            return
        status = 206 if start else 200
        self.state.requests.append((self.path, rng, status))
        self.send_response(status)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.path in self.state.truncate_once:
            self.state.truncate_once.discard(self.path)
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@dataclass
class Server:
    root: Path
    url: str
    state: ServerState

    def remote(self, filename: str, **kw: object) -> RemoteFile:
        """A RemoteFile for a served file with its true size and sha256 (overridable by ``kw``)."""
        data = (self.root / filename).read_bytes()
        args: dict = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} | kw
        return RemoteFile(url=f"{self.url}/{filename}", filename=filename, **args)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def _tar_gz_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "toy.zip").write_bytes(
        _zip_bytes({"Toy/images/a.bin": PAYLOAD, "Toy/images/b.txt": b"bee", "Toy/masks/a.txt": b"mask"})
    )
    (root / "extra.tar.gz").write_bytes(_tar_gz_bytes({"Toy/extra/c.txt": b"sea"}))
    (root / "README.txt").write_bytes(b"toy dataset\n")
    (root / "evil.zip").write_bytes(_zip_bytes({"ok.txt": b"ok", "../evil.txt": b"pwned"}))
    (root / "evil.tar").write_bytes(_tar_gz_bytes({"ok.txt": b"ok", "../evil.txt": b"pwned"}))
    state = ServerState()
    handler = type("Handler", (RangeHandler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def toy_spec(server: Server) -> DatasetSpec:
    md5 = hashlib.md5((server.root / "extra.tar.gz").read_bytes()).hexdigest()
    return DatasetSpec(
        name="toy",
        files=(
            server.remote("toy.zip"),
            server.remote("extra.tar.gz", sha256=None, md5=md5),
            server.remote("README.txt"),
        ),
        description="a toy dataset",
        layout=("Toy/images", "Toy/masks/a.txt", "Toy/extra/c.txt"),
    )


def test_download_dataset_extracts_checks_layout_and_writes_marker(server, toy_spec, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "data"
    assert download_dataset(toy_spec, out, cache_dir=cache) == out
    assert (out / "Toy/images/a.bin").read_bytes() == PAYLOAD
    assert (out / "Toy/masks/a.txt").read_bytes() == b"mask"
    assert (out / "Toy/extra/c.txt").read_bytes() == b"sea"
    assert (out / "README.txt").read_bytes() == b"toy dataset\n"
    assert not (out / "toy.zip").exists()  # archives are extracted, not copied
    marker = json.loads((out / ".mlcore-toy.json").read_text())
    assert marker["name"] == "toy"
    assert [f["sha256"] for f in marker["files"]] == [f.sha256 for f in toy_spec.files]
    assert marker["files"][1]["md5"] == toy_spec.files[1].md5
    assert len(server.state.requests) == 3

    assert download_dataset(toy_spec, out, cache_dir=cache) == out  # marker: no-op
    download_dataset(toy_spec, tmp_path / "again", cache_dir=cache)  # cache hit: no new request
    assert len(server.state.requests) == 3
    assert (tmp_path / "again/Toy/extra/c.txt").read_bytes() == b"sea"


def test_default_cache_dir_from_env(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLCORE_CACHE", str(tmp_path / "envcache"))
    path = download_file(server.remote("README.txt"))
    assert path == tmp_path / "envcache" / "README.txt"
    assert path.read_bytes() == b"toy dataset\n"


@pytest.mark.parametrize("algo", ["sha256", "md5"])
def test_bad_checksum_raises_and_deletes(server, tmp_path, algo):
    data = (server.root / "toy.zip").read_bytes()
    actual = hashlib.new(algo, data).hexdigest()
    wrong = hashlib.new(algo, b"something else").hexdigest()
    remote = server.remote("toy.zip", **{"sha256": None, algo: wrong})
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as exc:
        download_file(remote, cache, backoff_s=0)
    msg = str(exc.value)
    assert remote.url in msg and wrong in msg and actual in msg and algo in msg
    assert list(cache.iterdir()) == []  # neither the final file nor a .part is left


def test_resume_sends_range_and_appends(server, tmp_path):
    data = (server.root / "toy.zip").read_bytes()
    half = len(data) // 2
    (tmp_path / "toy.zip.part").write_bytes(data[:half])
    path = download_file(server.remote("toy.zip"), tmp_path)
    assert server.state.requests == [("/toy.zip", f"bytes={half}-", 206)]
    assert path.read_bytes() == data
    assert not (tmp_path / "toy.zip.part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.state.ignore_range = True
    data = (server.root / "toy.zip").read_bytes()
    (tmp_path / "toy.zip.part").write_bytes(b"\0" * (len(data) // 2))  # garbage that must be discarded
    path = download_file(server.remote("toy.zip"), tmp_path)
    assert server.state.requests == [("/toy.zip", f"bytes={len(data) // 2}-", 200)]
    assert path.read_bytes() == data


def test_stale_part_past_the_end_restarts_after_416(server, tmp_path):
    data = (server.root / "toy.zip").read_bytes()
    (tmp_path / "toy.zip.part").write_bytes(b"\0" * (len(data) + 10))
    path = download_file(server.remote("toy.zip", size=None), tmp_path, backoff_s=0)
    assert [s for _, _, s in server.state.requests] == [416, 200]
    assert path.read_bytes() == data


def test_interrupted_transfer_is_resumed_on_retry(server, tmp_path):
    server.state.truncate_once.add("/toy.zip")
    data = (server.root / "toy.zip").read_bytes()
    path = download_file(server.remote("toy.zip"), tmp_path, backoff_s=0)
    assert [(r, s) for _, r, s in server.state.requests] == [(None, 200), (f"bytes={len(data) // 2}-", 206)]
    assert path.read_bytes() == data


def test_corrupted_download_leaves_no_file_and_no_marker(server, toy_spec, tmp_path):
    good = (server.root / "toy.zip").read_bytes()
    (server.root / "toy.zip").write_bytes(bytes(b ^ 0xFF for b in good[:64]) + good[64:])  # same size
    cache, out = tmp_path / "cache", tmp_path / "data"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_dataset(toy_spec, out, cache_dir=cache)
    assert not (cache / "toy.zip").exists() and not (cache / "toy.zip.part").exists()
    assert not (out / ".mlcore-toy.json").exists()


def test_corrupted_cache_entry_is_downloaded_again(server, tmp_path):
    remote = server.remote("README.txt")
    (tmp_path / "README.txt").write_bytes(b"tampered!!!!")  # same size, wrong sha256
    assert download_file(remote, tmp_path).read_bytes() == b"toy dataset\n"
    assert len(server.state.requests) == 1


@pytest.mark.parametrize("delta", [-5, 5])
def test_wrong_size_raises(server, tmp_path, delta):
    remote = server.remote("toy.zip")
    remote = replace(remote, size=remote.size + delta)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="size mismatch"):
        download_file(remote, cache, backoff_s=0)
    assert list(cache.iterdir()) == []


def test_http_404_is_not_retried(server, tmp_path):
    remote = RemoteFile(url=f"{server.url}/missing.zip", filename="missing.zip", size=None)
    with pytest.raises(DownloadError, match="missing.zip.*404"):
        download_file(remote, tmp_path, retries=3, backoff_s=0)
    assert len(server.state.requests) == 1


@pytest.mark.parametrize("archive", ["evil.zip", "evil.tar"])
def test_path_traversal_member_raises(server, tmp_path, archive):
    spec = DatasetSpec(name="evil", files=(server.remote(archive),), description="bad")
    out = tmp_path / "nest" / "data"
    with pytest.raises(DownloadError, match=r"\.\./evil\.txt"):
        download_dataset(spec, out, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "nest" / "evil.txt").exists()
    assert not (out / "ok.txt").exists()  # checked before anything is extracted


def test_missing_layout_path_raises(server, toy_spec, tmp_path):
    spec = replace(toy_spec, layout=("Toy/images", "Toy/labels"))
    out = tmp_path / "data"
    with pytest.raises(DownloadError, match="'Toy/labels'"):
        download_dataset(spec, out, cache_dir=tmp_path / "cache")
    assert not (out / ".mlcore-toy.json").exists()


def test_spec_validation():
    with pytest.raises(ValueError, match="filename"):
        RemoteFile(url="http://x/a", filename="../a", size=1)
    with pytest.raises(ValueError, match="sha256"):
        RemoteFile(url="http://x/a", filename="a", size=1, sha256="abc")
    with pytest.raises(ValueError, match="URL"):
        RemoteFile(url="ftp://x/a", filename="a", size=1)
    f = RemoteFile(url="http://x/a", filename="a", size=1)
    with pytest.raises(ValueError, match="distinct"):
        DatasetSpec(name="d", files=(f, f), description="")


def test_cli_unknown_name_exits_2_with_one_line(server, toy_spec, tmp_path, capsys):
    main = make_data_main({"toy": toy_spec}, prog="toy-data")
    code = main(["download", "nope", "--to", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("toy-data: error: ") and "'nope'" in err


def test_cli_download_list_and_failure(server, toy_spec, tmp_path, capsys):
    bad = replace(toy_spec, name="bad", files=(server.remote("README.txt", sha256="0" * 64),))
    main = make_data_main({"toy": toy_spec, "bad": bad}, prog="toy-data")
    out = tmp_path / "d"
    assert main(["download", "toy", "--to", str(out), "--cache", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert (out / ".mlcore-toy.json").is_file()

    assert main(["list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["bad  a toy dataset", "toy  a toy dataset"]

    assert main(["download", "bad", "--to", str(out), "--cache", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("toy-data: error: ") and "sha256 mismatch" in err

"""Public-dataset downloader: HTTP with resume, size and checksum check, archive extraction, cache.

Each domain registers its datasets as :class:`DatasetSpec` objects (URLs, sizes, sha256/md5
digests and the relative paths the dataset's own layout must contain) and exposes them through
``<domain>-data download NAME --to DIR`` (see :mod:`mlcore.datacli`).

Downloads go to a cache folder (``$MLCORE_CACHE``, default ``~/.cache/mlcore/downloads``) as
``<filename>.part`` and are renamed to ``<filename>`` only once size and digest match, so a
corrupted download is never left looking valid. Only the standard library speaks HTTP here
(urllib with ``Range: bytes=N-`` to resume); no library adds resume + checksum + safe extraction
without pulling in a hub-specific client.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

_CHUNK = 1 << 20
_USER_AGENT = "mlcore-downloader/0.1 (+python urllib)"
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DownloadError(Exception):
    """A download, checksum, extraction or layout check failed (the message names the URL or path)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset at ``url``, cached as ``filename``.

    ``size`` is in bytes (None: unknown, not checked); ``sha256``/``md5`` are lowercase hex digests
    (None: not checked). ``extract=True`` unpacks a ``.zip``/``.tar*`` archive into the target
    folder; other files (or ``extract=False``) are copied there as ``filename``.

    Raises:
        ValueError: a non-http(s) URL, a filename with a path separator, a negative size or a
            digest of the wrong length.
    """

    url: str
    filename: str
    size: int | None
    sha256: str | None = None
    md5: str | None = None
    extract: bool = True

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"RemoteFile.url: expected an http(s) URL, got {self.url!r}")
        if not _NAME_RE.match(self.filename):
            raise ValueError(f"RemoteFile.filename: expected a plain file name, got {self.filename!r}")
        if self.size is not None and self.size < 0:
            raise ValueError(f"RemoteFile.size for {self.url}: expected >= 0 bytes, got {self.size}")
        for algo, n in (("sha256", 64), ("md5", 32)):
            digest = getattr(self, algo)
            if digest is not None and not re.fullmatch(f"[0-9a-f]{{{n}}}", digest):
                raise ValueError(f"RemoteFile.{algo} for {self.url}: expected {n} lowercase hex digits")

    @property
    def is_archive(self) -> bool:
        """True when the file is extracted (``extract`` and a zip/tar suffix)."""
        return self.extract and self.filename.lower().endswith((".zip", *_TAR_SUFFIXES))


@dataclass(frozen=True)
class DatasetSpec:
    """A public dataset: its files and the relative paths (``layout``) that must exist once extracted.

    ``layout`` entries are POSIX paths relative to the target folder, e.g.
    ``"Figaro1k/Original/Training"`` for Figaro-1k (Svanera et al., 2016).

    Raises:
        ValueError: an empty or non-filename-safe ``name``, no files, or duplicate filenames.
    """

    name: str
    files: tuple[RemoteFile, ...]
    description: str
    layout: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"DatasetSpec.name: expected letters, digits, '._-', got {self.name!r}")
        names = [f.filename for f in self.files]
        if not names or len(set(names)) != len(names):
            raise ValueError(
                f"DatasetSpec {self.name}: expected >= 1 file with distinct filenames, got {names}"
            )


def default_cache_dir() -> Path:
    """The download cache: ``$MLCORE_CACHE`` or ``~/.cache/mlcore/downloads``."""
    env = os.environ.get("MLCORE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlcore" / "downloads"


def _digests(path: Path, remote: RemoteFile) -> dict[str, str]:
    algos = [a for a in ("sha256", "md5") if getattr(remote, a) is not None]
    hashers = {a: hashlib.new(a) for a in algos}
    if hashers:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                for h in hashers.values():
                    h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _verify(path: Path, remote: RemoteFile) -> None:
    """Check size and digests of ``path``; on mismatch delete it and raise DownloadError."""
    size = path.stat().st_size
    problem = None
    if remote.size is not None and size != remote.size:
        problem = f"size mismatch: expected {remote.size} bytes, got {size}"
    else:
        for algo, actual in _digests(path, remote).items():
            if actual != getattr(remote, algo):
                problem = f"{algo} mismatch: expected {getattr(remote, algo)}, got {actual}"
                break
    if problem:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{remote.url}: {problem} (the download was deleted)")


def _fetch(remote: RemoteFile, part: Path, timeout_s: float) -> None:
    """Append the rest of ``remote`` to ``part`` (``Range: bytes=N-``), restarting on a 200 reply."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(remote.url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # range past the end: the part is stale, start over on the next try
            part.unlink(missing_ok=True)
        raise
    with resp:
        if offset and resp.status != 206:  # server ignored Range: start over
            offset = 0
        elif offset and not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink()  # a 206 for another range: start over on the next try
            raise http.client.HTTPException(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        received = 0
        with (
            part.open("ab" if offset else "wb") as out,
            tqdm(
                total=offset + expected if expected is not None else remote.size,
                initial=offset,
                desc=remote.filename,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=None,
            ) as bar,
        ):
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if remote.size is not None and offset + received > remote.size:
                    return  # more bytes than promised: stop, the size check reports it
    if expected is not None and received < expected:  # http.client does not raise on a short body
        raise http.client.IncompleteRead(b"", expected - received)


def download_file(
    remote: RemoteFile,
    cache_dir: str | Path | None = None,
    *,
    timeout_s: float = 60.0,
    retries: int = 3,
    backoff_s: float = 1.0,
) -> Path:
    """Download ``remote`` into ``cache_dir`` and return the verified file's path.

    A complete cached file whose size and digests match is returned without a request (one that
    does not match is deleted and downloaded again). A ``<filename>.part`` left by an interrupted
    run is resumed with ``Range: bytes=N-``; a server that answers 200 instead of 206 restarts it.
    Network errors (timeouts in s, dropped connections, HTTP errors) are retried ``retries`` times,
    waiting ``backoff_s * 2**attempt`` seconds between tries.

    Raises:
        DownloadError: the download failed after all retries, or the size or sha256/md5 digest
            does not match (message: URL, expected, actual); the bad file is deleted.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / remote.filename
    if final.is_file():
        try:
            _verify(final, remote)
            return final
        except DownloadError:
            pass  # stale or corrupted cache entry (already deleted): download again
    part = final.with_name(final.name + ".part")
    for attempt in range(retries + 1):
        if part.exists() and remote.size is not None and part.stat().st_size >= remote.size:
            break  # already complete (or too long): the check below decides
        try:
            _fetch(remote, part, timeout_s)
            break
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            http_code = e.code if isinstance(e, urllib.error.HTTPError) else 0
            permanent = 400 <= http_code < 500 and http_code not in (408, 416, 429)  # 404 stays 404
            if permanent or attempt == retries:
                tries = f"after {attempt + 1} tries" if attempt else "on the first try"
                raise DownloadError(f"{remote.url}: download failed {tries}: {e}") from e
            if backoff_s > 0:
                time.sleep(backoff_s * 2**attempt)
    _verify(part, remote)
    part.replace(final)
    return final


def _check_members(names: list[str], target: Path, archive: Path) -> None:
    root = target.resolve()
    for name in names:
        dest = (root / name).resolve()
        if Path(name).is_absolute() or (dest != root and root not in dest.parents):
            raise DownloadError(f"{archive}: member {name!r} would extract outside {target}")


def _extract(archive: Path, target: Path) -> None:
    """Unpack a zip/tar archive into ``target``; members escaping it (or a broken archive) raise."""
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                _check_members(zf.namelist(), target, archive)
                zf.extractall(target)
            return
        with tarfile.open(archive) as tf:
            _check_members(tf.getnames(), target, archive)
            tf.extractall(target, filter="data")  # also rejects links outside, device files
    except (zipfile.BadZipFile, tarfile.TarError) as e:
        raise DownloadError(f"{archive}: cannot extract: {e}") from e


def _marker(spec: DatasetSpec) -> dict:
    return {"name": spec.name, "files": [asdict(f) for f in spec.files], "layout": list(spec.layout)}


def download_dataset(spec: DatasetSpec, to_dir: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """Download every file of ``spec``, unpack archives into ``to_dir`` and check the layout.

    Other files are copied to ``to_dir/<filename>``. On success writes ``to_dir/.mlcore-<name>.json``
    (files, digests, layout); a later call with the same spec and the layout still present returns
    at once. Returns ``to_dir``.

    Raises:
        DownloadError: a download, checksum or extraction failure (see :func:`download_file`), or a
            ``layout`` path missing after extraction (named in the message); no marker is written.
    """
    target = Path(to_dir).expanduser()
    marker = target / f".mlcore-{spec.name}.json"
    record = _marker(spec)
    missing = [p for p in spec.layout if not (target / p).exists()]
    if marker.is_file() and not missing:
        try:
            if json.loads(marker.read_text()) == record:
                return target
        except json.JSONDecodeError:
            pass
    marker.unlink(missing_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    for remote in spec.files:
        path = download_file(remote, cache_dir)
        if remote.is_archive:
            _extract(path, target)
        else:
            shutil.copyfile(path, target / remote.filename)
    missing = [p for p in spec.layout if not (target / p).exists()]
    if missing:
        raise DownloadError(
            f"dataset {spec.name}: expected {missing[0]!r} under {target} after extraction "
            f"({len(missing)} layout path(s) missing)"
        )
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return target

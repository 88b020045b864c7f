"""Benchmark: one pass over the Figaro-1k sample, decoding JPEG + PBM per item vs the memory-mapped cache.

Usage: ``uv run --no-sync python bench/hairseg_cache.py [--image-size 384] [--repeats 3]``. Reads the sample
data from ``$MLDATA_ROOT/figaro1k`` (default ``../shared/data`` next to the repository). The cache is built in
a temporary folder (or ``--cache-dir``), so nothing is left in ``~/.cache``.

Two passes are timed for each source, in a single process with one torch thread (as a DataLoader worker):
- ``uint8``: fetch the resized ``(S, S, 3)`` image and ``(S, S)`` mask (``HairSegDataset.load_uint8``);
- ``item``: the full evaluation ``__getitem__`` (uint8 -> float32, ImageNet normalisation).
The median over ``--repeats`` passes is printed with the decode/cache ratio. The cache file is in the OS page
cache after it is written, as it is for every epoch after the first in a real run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from hairseg.data import HairSegDataset, find_samples

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$MLDATA_ROOT`` or ``../shared/data`` seen from the repository root."""
    env = os.environ.get("MLDATA_ROOT")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def time_pass(n: int, fetch: Callable[[int], object], label: str, repeats: int) -> float:
    """Median wall time (s) of ``repeats`` passes calling ``fetch(i)`` for ``i`` in ``range(n)``."""
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        for i in tqdm(range(n), desc=f"{label} {r + 1}/{repeats}", leave=False, disable=None):
            fetch(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the cache, time both sources and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=384, help="cache side S in px (default 384)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per source (default 3)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker; also keeps timings sane on a shared CPU

    root = data_root() / "figaro1k"
    samples = find_samples(root, "all")
    size = args.image_size
    with tempfile.TemporaryDirectory(prefix="hairseg-bench-") as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        start = time.perf_counter()
        cached = HairSegDataset(samples, image_size=size, cache_dir=cache_dir)
        build_s = time.perf_counter() - start
        decoded = HairSegDataset(samples, image_size=size, use_cache=False)
        n = len(samples)
        results = {}
        for kind in ("uint8", "item"):
            for label, ds in (("decode", decoded), ("cache", cached)):
                fetch = ds.load_uint8 if kind == "uint8" else ds.__getitem__
                results[kind, label] = time_pass(n, fetch, f"{kind}/{label}", args.repeats)
        cache_mb = sum(f.stat().st_size for f in Path(cache_dir).glob("*.npy")) / 2**20

    print(f"Figaro-1k sample: {n} image/mask pairs from {root}, S={size} px, median of {args.repeats} passes")
    print(f"cache build (decode + resize + write, once): {build_s:.2f} s, {cache_mb:.0f} MiB on disk")
    print(f"{'pass':<8}{'decode JPEG+PBM':>18}{'mmap cache':>14}{'ratio':>9}")
    for kind in ("uint8", "item"):
        dec, cac = results[kind, "decode"], results[kind, "cache"]
        print(f"{kind:<8}{dec:>16.2f} s{cac:>12.3f} s{dec / cac:>8.1f}x")
        print(f"{'':<8}{1e3 * dec / n:>13.2f} ms/it{1e3 * cac / n:>9.3f} ms/it")


if __name__ == "__main__":
    main()

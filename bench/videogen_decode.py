"""videogen clip loading: PyAV seek-and-decode-a-window vs decoding the file from the start, and
the in-memory frame cache (``--cache-frames``) vs per-item decoding.

For every sample clip, a 16-frame window at 8 fps starting at 70% of the clip:
  (a) seek to the keyframe before the window and decode only to its last frame (what
      ``read_clip`` does before resizing);
  (b) decode from the first frame (no seek) up to the same window and pick the same frames;
  (c) the whole ``read_clip`` (seek + decode + float conversion + antialiased resize to 64 px);
  (d) a window cut from ``VideoClipDataset(cache_frames=True)`` after its one-time decode.
Variants are interleaved per repeat; the script prints median times and ratios measured in one
run. One torch thread (as in the cpu preset).

    uv run python bench/videogen_decode.py
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import av
import numpy as np
import torch

from videogen.data import (
    ClipInfo,
    VideoClipDataset,
    _decode_times,
    build_index,
    probe_clip,
    read_clip,
    sample_times,
)


def decode_from_start(path: Path, times: np.ndarray) -> list[np.ndarray]:
    out, prev, i = [], None, 0
    with av.open(str(path)) as c:
        c.streams.video[0].thread_type = "AUTO"  # as in _decode_times
        for frame in c.decode(video=0):
            while i < len(times) and frame.time > times[i] + 1e-6:
                out.append(prev if prev is not None else frame.to_ndarray(format="rgb24"))
                i += 1
            if i >= len(times):
                break
            prev = frame.to_ndarray(format="rgb24")
    while i < len(times):
        out.append(prev)
        i += 1
    return out


def main(repeats: int = 5) -> None:
    torch.set_num_threads(1)
    root = Path(os.environ.get("MLDATA_ROOT", "../shared/data")) / "videos"
    index = build_index(root)
    rows = []
    for clip in sorted(index.clips, key=lambda c: c.path):
        path = index.root / clip.path
        info = probe_clip(path)
        start = 0.7 * max(info["duration"] - 15 / 8.0, 0.0)
        times = sample_times(info["duration"], 16, 8.0, info["fps"], 1, start)
        ds = VideoClipDataset(index.root, [ClipInfo(**{**clip.__dict__})], num_frames=16, size=64, fps=8.0,
                              train=False, cache_frames=True)
        t0 = time.perf_counter()
        ds[0]
        build = time.perf_counter() - t0
        ta, tb, tc, td = [], [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            seek = _decode_times(path, times)
            ta.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            full = decode_from_start(path, times)
            tb.append(time.perf_counter() - t0)
            assert all(np.array_equal(x, y) for x, y in zip(seek, full, strict=True))  # same frames
            t0 = time.perf_counter()
            read_clip(path, 16, fps=8.0, start=start, size=64, info=info)
            tc.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ds[0]
            td.append(time.perf_counter() - t0)
        a, b, c, d = (statistics.median(x) for x in (ta, tb, tc, td))
        rows.append((clip.name, info["duration"], f"{info['width']}x{info['height']}", a, b, c, d, build))
    print(f"{'clip':<20}{'dur s':>6}{'size':>10}{'seek ms':>9}{'from start':>11}{'speed-up':>9}"
          f"{'read_clip':>10}{'cached ms':>10}{'vs read_clip':>13}{'cache build s':>14}")
    for name, dur, size, a, b, c, d, build in rows:
        print(f"{name:<20}{dur:>6.2f}{size:>10}{a * 1e3:>9.1f}{b * 1e3:>11.1f}{b / a:>8.2f}x"
              f"{c * 1e3:>10.1f}{d * 1e3:>10.2f}{c / d:>12.0f}x{build:>14.2f}")


if __name__ == "__main__":
    main()

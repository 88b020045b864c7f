"""Video clips for training and evaluation: captions index, PyAV decoding with seek, curriculum phases.

A dataset is a folder with ``captions.csv`` (columns ``path,caption`` and optionally ``phase`` and
``tags``; ``path`` relative to the folder) and the clips it names, as in ``$MLDATA_ROOT/videos``.

- :func:`probe_clip` reads a clip's metadata (duration, fps, size, frame count) from the container
  headers; :class:`ClipIndex` probes every clip once and caches the result in a JSON file keyed by
  path, size and modification time.
- :func:`read_clip` decodes ``T`` frames at a target fps (or every ``stride``-th source frame)
  starting at a time offset: it seeks to the keyframe before the offset and decodes only up to the
  last needed frame (no full-file decode), then resizes (short side) and centre/random crops.
- :func:`motion_score` (mean absolute difference of consecutive frames) orders clips from calm
  to busy for the curriculum when ``captions.csv`` has no ``phase`` column.
- A clip that cannot be opened or decoded is reported with its path and skipped with a count;
  it never stops a long run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mlcore.data import BadSampleLog, DataError  # DataError: the one shared by every domain

log = logging.getLogger("videogen.data")

CAPTIONS = "captions.csv"
NUM_PHASES = 5


@dataclass
class ClipInfo:
    """Metadata of one clip, probed from the container (seconds, frames per second, pixels)."""

    path: str
    caption: str
    duration: float
    fps: float
    width: int
    height: int
    frames: int
    phase: int | None = None
    tags: str = ""
    motion: float | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass
class ClipIndex:
    """The usable clips of a dataset folder plus the ones skipped (path -> reason)."""

    root: Path
    clips: list[ClipInfo]
    skipped: dict[str, str] = field(default_factory=dict)

    def _pick(self, ordered: list[ClipInfo], spec: str, flag: str, auto_index: int) -> list[ClipInfo]:
        if spec == "none":
            return []
        if spec == "auto":
            return [c for i, c in enumerate(ordered) if i % 5 == auto_index]
        picked = []
        for w in (w.strip() for w in spec.split(",")):
            if not w:
                continue
            hit = [c for c in ordered if c.path == w or c.name == w]
            if not hit:
                raise DataError(f"{flag}: {w!r} is not a clip of {self.root / CAPTIONS} "
                                f"(clips: {', '.join(c.path for c in ordered)})")
            picked.extend(hit)
        return picked

    def split(self, val_clips: str, test_clips: str = "none") -> tuple[list[ClipInfo], list[ClipInfo], list[ClipInfo]]:
        """``(train, val, test)`` clips: val selects checkpoints and tunes; test is reported only.

        ``val_clips`` is ``"none"``, ``"auto"`` (every 5th clip in sorted path order, starting with the 5th: with
        the 5 sample clips, ``clips/fire2.mp4``; the last clip when there are fewer than 5 but more than one) or
        a comma-separated list of clip paths or file names. ``test_clips`` the same, with ``"auto"`` taking every
        5th clip starting with the 4th (``clips/chaplin.mp4`` of the samples); default ``"none"``.

        Raises:
            DataError: a named clip is not in the index, or a clip is both val and test.
        """
        ordered = sorted(self.clips, key=lambda c: c.path)
        val = self._pick(ordered, val_clips, "--val-clips", 4)
        if val_clips == "auto" and not val and len(ordered) > 1:
            val = [ordered[-1]]
        test = self._pick(ordered, test_clips, "--test-clips", 3)
        both = {c.path for c in val} & {c.path for c in test}
        if both:
            raise DataError(f"--val-clips and --test-clips share {', '.join(sorted(both))}: a clip that selects "
                            "checkpoints cannot also report the figure")
        held = {c.path for c in val} | {c.path for c in test}
        return [c for c in ordered if c.path not in held], val, test


def find_root(data: str | Path) -> Path:
    """The folder holding ``captions.csv``: ``data`` itself or ``data/videos``.

    Raises:
        DataError: neither holds a ``captions.csv``.
    """
    data = Path(data)
    for cand in (data, data / "videos"):
        if (cand / CAPTIONS).is_file():
            return cand
    raise DataError(f"--data {data}: no {CAPTIONS} here or in {data / 'videos'} (expected columns path,caption)")


def read_captions(root: Path) -> list[dict[str, Any]]:
    """Rows of ``root/captions.csv`` as ``{"path", "caption", "phase" (int|None), "tags"}``.

    Raises:
        DataError: missing columns, an empty file or a ``phase`` outside 1..5 (line number named).
    """
    path = root / CAPTIONS
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "path" not in cols or "caption" not in cols:
            raise DataError(f"{path}: expected columns path,caption (optional phase,tags), got {','.join(cols)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            phase = (row.get("phase") or "").strip()
            if phase:
                try:
                    p = int(phase)
                except ValueError:
                    p = -1
                if not 1 <= p <= NUM_PHASES:
                    raise DataError(f"{path}:{line}: phase must be an integer 1..{NUM_PHASES}, got {phase!r}")
            rows.append({"path": (row["path"] or "").strip(), "caption": (row["caption"] or "").strip(),
                         "phase": int(phase) if phase else None, "tags": (row.get("tags") or "").strip()})
    if not rows:
        raise DataError(f"{path}: no clips listed")
    return rows


def probe_clip(path: str | Path) -> dict[str, Any]:
    """Duration (s), fps, width, height and frame count of a video file's first video stream.

    Reads the container headers and demuxes (without decoding) every video packet: when the
    stream does not state its frame count it is estimated as ``round(duration * fps)``, and a file
    whose packets end more than :data:`TRUNCATION_TOLERANCE_FRAMES` frame periods before the
    stated duration (a partly downloaded "faststart" mp4: index at the front, data cut off) is
    refused.

    Raises:
        DataError: the file cannot be opened, has no video stream, or is truncated (message names
            the path, the stated duration and where the data ends).
    """
    try:
        if Path(path).stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes), not a video")
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            s = container.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0)
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif container.duration is not None:
                duration = container.duration / 1e6
            else:
                duration = 0.0
            frames = int(s.frames) or int(round(duration * fps))
            width, height = s.codec_context.width, s.codec_context.height
            media_end = _media_end(container, s) if fps > 0 and duration > 0 else None
    except DataError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot open video ({type(exc).__name__}: {exc})") from exc
    if fps <= 0 or duration <= 0 or width <= 0 or height <= 0:
        raise DataError(f"{path}: unusable stream (fps {fps}, duration {duration}, size {width}x{height})")
    if media_end is None or media_end < duration - TRUNCATION_TOLERANCE_FRAMES / fps:
        got = "no video packets" if media_end is None else f"video data ends at {media_end:.2f} s"
        raise DataError(f"{path}: truncated or partly downloaded: the header states {duration:.2f} s "
                        f"({frames} frames) but {got}")
    return {"duration": duration, "fps": fps, "width": width, "height": height, "frames": frames}


TRUNCATION_TOLERANCE_FRAMES = 2.0  # media may end this many frame periods before the stated duration


def _media_end(container: Any, stream: Any) -> float | None:
    """End time (s) of the last video packet present in the file: demuxes every packet (no
    decoding), so a file whose index (``moov``, "faststart") promises more than its data holds
    is caught before any frame is decoded. ``None`` when the file has no timed video packet.

    Raises:
        av.FFmpegError: the container's data cannot be read (the caller names the file).
    """
    tb = float(stream.time_base)
    end: float | None = None
    for packet in container.demux(stream):
        if packet.size and packet.pts is not None:
            e = (packet.pts + (packet.duration or 0)) * tb
            end = e if end is None else max(end, e)
    return end


def sample_times(duration: float, num_frames: int, fps: float | None, src_fps: float, stride: int,
                 start: float) -> np.ndarray:
    """Timestamps (s) of ``num_frames`` frames from ``start``: every ``1/fps`` s when ``fps`` is set,
    else every ``stride`` source frames. Times past the end are clamped to the last frame."""
    step = 1.0 / fps if fps else stride / src_fps
    times = start + step * np.arange(num_frames)
    return np.minimum(times, max(duration - 0.5 / src_fps, 0.0))


def window_seconds(num_frames: int, fps: float | None, src_fps: float, stride: int) -> float:
    """Length in seconds spanned by ``num_frames`` sampled frames."""
    step = 1.0 / fps if fps else stride / src_fps
    return step * (num_frames - 1)


def _decode_times(path: str | Path, times: np.ndarray) -> list[np.ndarray]:
    """Decode the frames showing at ``times`` (sorted, seconds) as ``(H, W, 3) uint8`` arrays.

    Seeks to the keyframe at or before ``times[0]`` and decodes forward until the last time is
    covered; each time gets the last frame whose timestamp is <= it (the first frame if none).
    """
    out: list[np.ndarray | None] = [None] * len(times)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base)
        start_pts = int(times[0] / tb)
        container.seek(max(start_pts, 0), stream=stream, backward=True, any_frame=False)
        prev: np.ndarray | None = None
        last_t = -1.0
        i = 0
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else (frame.pts or 0) * tb
            last_t = t
            while i < len(times) and t > times[i] + 1e-6:
                out[i] = prev if prev is not None else frame.to_ndarray(format="rgb24")
                i += 1
            if i >= len(times):
                break
            prev = frame.to_ndarray(format="rgb24")
        if i < len(times):
            # the stream ended before the last requested time: fine when that time lies within the
            # final frame's display period (times are clamped to the stated duration), else the file
            # is shorter than its header says (a truncated download) and repeating the last good
            # frame would silently corrupt every metric
            period = 1.0 / float(stream.average_rate or stream.guessed_rate or 25)
            if prev is None or times[-1] > last_t + TRUNCATION_TOLERANCE_FRAMES * period:
                got = "no frame" if prev is None else f"frames up to {last_t:.2f} s"
                raise DataError(f"{path}: truncated or corrupt: decoding stopped with {got}, "
                                f"needed {times[-1]:.2f} s")
        while i < len(times):
            out[i] = prev
            i += 1
    return out  # type: ignore[return-value]


def resize_crop(frames: torch.Tensor, size: int | tuple[int, int], crop: str = "center",
                rng: random.Random | None = None) -> torch.Tensor:
    """Resize ``(T, 3, H, W)`` frames so the short side covers the crop, then crop to ``size``.

    Args:
        frames: ``(T, 3, H, W)`` float32 in [0, 1].
        size: output ``S`` (square) or ``(H, W)`` in px.
        crop: ``"center"`` or ``"random"`` (offset drawn from ``rng``).

    Returns:
        ``(T, 3, h, w)`` float32 in [0, 1] (bilinear with antialiasing).
    """
    h, w = (size, size) if isinstance(size, int) else size
    _, _, H, W = frames.shape
    scale = max(h / H, w / W)
    nh, nw = max(h, round(H * scale)), max(w, round(W * scale))
    if (nh, nw) != (H, W):
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False,
                               antialias=True).clamp_(0, 1)
    if crop == "random":
        rng = rng or random
        top, left = rng.randint(0, nh - h), rng.randint(0, nw - w)
    else:
        top, left = (nh - h) // 2, (nw - w) // 2
    return frames[:, :, top:top + h, left:left + w]


def read_clip(path: str | Path, num_frames: int = 16, *, fps: float | None = None, stride: int = 1,
              start: float = 0.0, size: int | tuple[int, int] | None = None, crop: str = "center",
              rng: random.Random | None = None, info: dict[str, Any] | None = None) -> torch.Tensor:
    """Decode ``num_frames`` frames of a clip from ``start`` seconds.

    Args:
        path: video file.
        num_frames: frames to return (``T``).
        fps: target frame rate (frames are sampled every ``1/fps`` s); ``None``: every ``stride``-th
            source frame.
        start: first frame's time in seconds (clamped so the window fits when it can).
        size: output size in px (short side resize + crop); ``None`` keeps the source size.
        crop: ``"center"`` or ``"random"``.
        info: the clip's :func:`probe_clip` result (probed when not given).

    Returns:
        ``(T, 3, H, W)`` float32 in [0, 1]. A clip shorter than the window repeats its last frame.

    Raises:
        DataError: unreadable or truncated file (message names the path).
    """
    info = info or probe_clip(path)
    span = window_seconds(num_frames, fps, info["fps"], stride)
    start = float(min(max(start, 0.0), max(info["duration"] - span - 1.0 / info["fps"], 0.0)))
    times = sample_times(info["duration"], num_frames, fps, info["fps"], stride, start)
    try:
        arrays = _decode_times(path, times)
    except DataError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DataError(f"{path}: decoding failed ({type(exc).__name__}: {exc})") from exc
    frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None:
        frames = resize_crop(frames, size, crop, rng)
    return frames


def motion_score(path: str | Path, info: dict[str, Any] | None = None, *, samples: int = 16,
                 size: int = 64) -> float:
    """Mean absolute difference between consecutive frames (0..1 scale), over ``samples`` frames
    spread evenly across the clip at ``size`` px: low for a calm clip, high for fast motion/cuts."""
    info = info or probe_clip(path)
    fps = (samples - 1) / max(info["duration"] - 1.0 / info["fps"], 1e-3)
    frames = read_clip(path, samples, fps=min(fps, info["fps"]), size=size, info=info)
    return float((frames[1:] - frames[:-1]).abs().mean())


def _cache_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"


def build_index(data: str | Path, *, cache_dir: str | Path | None = None, with_motion: bool = True,
                warn: bool = True) -> ClipIndex:
    """Probe every clip of ``captions.csv`` once (cached) and return the usable ones.

    Clips that are missing, unreadable or truncated are logged with their path and reason and
    left out (``index.skipped``); the run goes on with the rest.

    Args:
        data: the dataset folder (holding ``captions.csv``) or its parent.
        cache_dir: where the probe cache lives (default ``$VIDEOGEN_CACHE`` or ``~/.cache/videogen``).
        with_motion: also measure :func:`motion_score` (needed for curriculum ordering).
        warn: log skipped clips as warnings (False: at debug level, for callers that refuse them
            with their own one-line error).

    Raises:
        DataError: no ``captions.csv`` or no usable clip at all.
    """
    warn_fn = log.warning if warn else log.debug
    root = find_root(data)
    rows = read_captions(root)
    cache_dir = Path(cache_dir or os.environ.get("VIDEOGEN_CACHE") or Path.home() / ".cache" / "videogen")
    cache_file = cache_dir / f"probe-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]}.json"
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    clips, skipped, changed = [], {}, False
    for row in rows:
        path = root / row["path"]
        if not path.is_file():
            skipped[row["path"]] = "file not found"
            warn_fn("skipping %s: file not found", path)
            continue
        key = _cache_key(path)
        meta = cache.get(key)
        try:
            if meta is None:
                meta = probe_clip(path)
                changed = True
            if with_motion and meta.get("motion") is None:
                meta["motion"] = motion_score(path, meta)
                changed = True
        except DataError as exc:
            skipped[row["path"]] = str(exc)
            warn_fn("skipping unreadable clip %s", exc)
            continue
        cache[key] = meta
        clips.append(ClipInfo(path=row["path"], caption=row["caption"], phase=row["phase"], tags=row["tags"],
                              **{k: meta[k] for k in ("duration", "fps", "width", "height", "frames")},
                              motion=meta.get("motion")))
    if changed:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            os.replace(tmp, cache_file)
        except OSError as exc:  # a read-only home must not stop training
            log.warning("cannot write the probe cache %s: %s", cache_file, exc)
    if skipped:
        warn_fn("%d of %d clips skipped (unreadable or missing): %s", len(skipped), len(rows),
                    ", ".join(skipped))
    if not clips:
        raise DataError(f"{root / CAPTIONS}: none of the {len(rows)} clips is readable")
    return ClipIndex(root=root, clips=clips, skipped=skipped)


def assign_phases(clips: Sequence[ClipInfo], num_phases: int = NUM_PHASES) -> dict[int, list[ClipInfo]]:
    """Clips of each curriculum phase ``1..num_phases``.

    With a ``phase`` column, a clip belongs to its phase, and the last phase (the seed's
    "refinement mix") gets every clip when no clip names it. Without one, clips are sorted by
    :func:`motion_score` (calm first) and phase ``p < num_phases`` gets the calmest
    ``ceil(p / (num_phases - 1) * n)`` clips (simple before complex, each phase adding busier clips);
    the last phase gets all of them. A phase is never empty: it falls back to the previous phase's clips.
    """
    out: dict[int, list[ClipInfo]] = {}
    if clips and all(c.phase is not None for c in clips):
        for p in range(1, num_phases + 1):
            out[p] = [c for c in clips if c.phase == p]
        if not out[num_phases]:
            out[num_phases] = list(clips)
    else:
        ordered = sorted(clips, key=lambda c: (c.motion if c.motion is not None else math.inf, c.path))
        n = len(ordered)
        for p in range(1, num_phases):
            out[p] = ordered[: max(1, math.ceil(p / (num_phases - 1) * n))]
        out[num_phases] = ordered
    for p in range(1, num_phases + 1):
        if not out[p]:
            out[p] = out.get(p - 1) or list(clips)
    return out


class VideoClipDataset(Dataset):
    """``samples`` training items drawn round-robin from ``clips``: item ``i`` is a ``T``-frame window
    of clip ``i % len(clips)``.

    Training (``train=True``): random window start and random crop (with ``crop_scale < 1``, a square of
    a random fraction in [``crop_scale``, 1] of the area, resized to ``size``: timm's RandomResizedCrop
    scale at aspect ratio 1), and with probability ``hflip``
    a horizontal mirror and with probability ``time_reverse`` the frames in reverse order (all from
    the global RNGs, which :func:`mlcore.make_loader` seeds per (seed, epoch, index), so resume is
    exact). Evaluation:
    ``windows_per_clip`` evenly spaced windows per clip and a centre crop; ``samples`` is ignored.

    Items: ``{"video": (3, T, H, W) float32 in [0, 1], "caption": str, "index": int}``.

    A clip that fails to decode is logged with its path once and replaced by the next clip; it is
    recorded in ``bad_log`` (an :class:`mlcore.BadSampleLog` shared by every loader worker, so
    ``failures`` is exact for any ``num_workers``); when every clip fails, :class:`DataError`.

    Args:
        root: dataset folder (paths in ``clips`` are relative to it).
        clips: the clips to draw from.
        num_frames, fps, stride: see :func:`read_clip`.
        size: output size in px.
        cache_frames: decode each clip once into memory at the output scale (uint8) and cut windows
            from it: for small clip sets (the sample data, tests) where per-item decoding would
            dominate a step on a 2-core CPU. Off by default (per-item seek + decode).
        bad_log: where clips that fail to decode are recorded (default: a new one).
        hflip, time_reverse: training augmentation probabilities in [0, 1] (ignored when ``train`` is
            False): mirror left-right, play the window backwards.
        crop_scale: smallest area fraction of a training crop, in (0, 1] (1: crops of the full short side).

    Raises:
        DataError: ``clips`` is empty.
        ValueError: ``hflip`` or ``time_reverse`` outside [0, 1], ``crop_scale`` outside (0, 1].
    """

    def __init__(self, root: str | Path, clips: Sequence[ClipInfo], *, num_frames: int = 16, size: int = 256,
                 fps: float | None = 8.0, stride: int = 1, train: bool = True, samples: int | None = None,
                 windows_per_clip: int = 1, cache_frames: bool = False, bad_log: BadSampleLog | None = None,
                 hflip: float = 0.0, time_reverse: float = 0.0, crop_scale: float = 1.0) -> None:
        if not clips:
            raise DataError(f"{root}: no clips to load")
        for name, p in (("hflip", hflip), ("time_reverse", time_reverse)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1] (got {p})")
        if not 0.0 < crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1] (got {crop_scale})")
        self.hflip, self.time_reverse, self.crop_scale = hflip, time_reverse, crop_scale
        # frames are loaded at this size, so the smallest crop still has ``size`` px of real detail
        self.load_size = size if not (train and crop_scale < 1) else math.ceil(size / math.sqrt(crop_scale))
        self.root, self.clips = Path(root), list(clips)
        self.num_frames, self.size, self.fps, self.stride = num_frames, size, fps, stride
        self.train, self.cache_frames = train, cache_frames
        self.windows_per_clip = windows_per_clip
        self.samples = samples if (train and samples) else len(self.clips) * (1 if train else windows_per_clip)
        self.bad_log = bad_log if bad_log is not None else BadSampleLog()
        self._failed: set[str] = set()
        self._cache: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.samples

    @property
    def failures(self) -> int:
        """Clips that failed to decode so far, counted once each across all loader workers."""
        return len(self.bad_log)

    def _info(self, clip: ClipInfo) -> dict[str, Any]:
        return asdict(clip)

    def _window_start(self, clip: ClipInfo, index: int) -> float:
        span = window_seconds(self.num_frames, self.fps, clip.fps, self.stride)
        room = max(clip.duration - span - 1.0 / clip.fps, 0.0)
        if self.train:
            return random.uniform(0.0, room)
        k = index % self.windows_per_clip if self.windows_per_clip > 1 else 0
        return room * (k + 0.5) / self.windows_per_clip if self.windows_per_clip > 1 else room / 2

    def _cached_frames(self, clip: ClipInfo) -> tuple[torch.Tensor, float]:
        """All frames of the clip at ``fps`` (or every stride-th), short side resized, as uint8."""
        if clip.path not in self._cache:
            src_fps = self.fps or clip.fps / self.stride
            n = max(1, int(clip.duration * src_fps))
            frames = read_clip(self.root / clip.path, n, fps=self.fps, stride=self.stride, info=self._info(clip))
            _, _, H, W = frames.shape
            size = self.load_size
            scale = size / min(H, W)
            frames = F.interpolate(frames, size=(max(size, round(H * scale)), max(size, round(W * scale))),
                                   mode="bilinear", align_corners=False, antialias=True)
            self._cache[clip.path] = (frames.clamp(0, 1) * 255).round().to(torch.uint8)
        return self._cache[clip.path], self.fps or clip.fps / self.stride

    def _load(self, clip: ClipInfo, index: int) -> torch.Tensor:
        crop = "random" if self.train else "center"
        if self.cache_frames:
            frames, rate = self._cached_frames(clip)
            n = frames.shape[0]
            start = round(self._window_start(clip, index) * rate)
            start = min(max(start, 0), max(n - self.num_frames, 0))
            idx = torch.clamp(torch.arange(start, start + self.num_frames), max=n - 1)
            video = resize_crop(frames[idx].float().div_(255.0), self.load_size, crop)
        else:
            video = read_clip(self.root / clip.path, self.num_frames, fps=self.fps, stride=self.stride,
                              start=self._window_start(clip, index), size=self.load_size, crop=crop,
                              info=self._info(clip))
        if self.load_size == self.size:
            return video
        n = self.load_size  # random-scale square crop, resized to size (antialiased)
        side = max(self.size // 2, min(n, round(n * math.sqrt(random.uniform(self.crop_scale, 1.0)))))
        top, left = random.randint(0, n - side), random.randint(0, n - side)
        return F.interpolate(video[:, :, top:top + side, left:left + side], size=(self.size, self.size),
                             mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)

    def clip_of(self, index: int) -> ClipInfo:
        """The clip item ``index`` is drawn from."""
        per = 1 if self.train else self.windows_per_clip
        return self.clips[(index // per) % len(self.clips)] if not self.train else self.clips[index % len(self.clips)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self.clips)):
            clip = self.clip_of(index) if attempt == 0 else self.clips[(self.clips.index(self.clip_of(index)) + attempt)
                                                                     % len(self.clips)]
            if clip.path in self._failed:
                continue
            try:
                video = self._load(clip, index)  # (T, 3, H, W)
                if self.train and self.hflip and random.random() < self.hflip:
                    video = video.flip(-1)
                if self.train and self.time_reverse and random.random() < self.time_reverse:
                    video = video.flip(0)
            except DataError as exc:
                self._failed.add(clip.path)
                self.bad_log.record(clip.path, str(exc))  # logs the warning with the path
                continue
            return {"video": video.permute(1, 0, 2, 3).contiguous(), "caption": clip.caption, "index": index}
        raise DataError(f"{self.root}: every clip failed to decode ({', '.join(sorted(self._failed))})")


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack videos to ``(B, 3, T, H, W)`` (or cached latents, key ``latent``, to ``(B, C, t, h, w)``);
    captions stay a list of str."""
    key = "latent" if "latent" in batch[0] else "video"
    return {key: torch.stack([b[key] for b in batch]), "caption": [b["caption"] for b in batch],
            "index": torch.tensor([b["index"] for b in batch])}

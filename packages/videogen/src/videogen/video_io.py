"""Writing clips as H.264 mp4 files with PyAV, and side-by-side / grid images of frames."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``(3, T, H, W)`` float in [0, 1] (clamped) -> ``(T, H, W, 3) uint8``."""
    return (video.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def write_mp4(video: torch.Tensor, path: str | Path, fps: float = 8.0, crf: int = 18) -> Path:
    """Encode ``video`` ``(3, T, H, W)`` float in [0, 1] as H.264 (libx264, yuv420p) in an mp4.

    Odd heights/widths are padded by one pixel (yuv420p needs even sizes).

    Raises:
        ValueError: not a ``(3, T, H, W)`` tensor.
    """
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"write_mp4 expects (3, T, H, W), got {tuple(video.shape)}")
    frames = to_uint8_frames(video)
    t, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2
    if (ph, pw) != (h, w):
        frames = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from fractions import Fraction
    with av.open(str(path), mode="w", format="mp4") as container:  # the format even without a .mp4 suffix
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        stream.options = {"crf": str(crf)}
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def side_by_side(*videos: torch.Tensor, gap: int = 2) -> torch.Tensor:
    """Concatenate ``(3, T, H, W)`` clips left to right with a white ``gap`` px column between."""
    parts = []
    for i, v in enumerate(videos):
        if i:
            parts.append(torch.ones(3, v.shape[1], v.shape[2], gap))
        parts.append(v.detach().float().cpu().clamp(0, 1))
    return torch.cat(parts, dim=3)


def frames_grid_png(video: torch.Tensor, path: str | Path, max_frames: int = 8) -> Path:
    """Write up to ``max_frames`` evenly spaced frames of ``(3, T, H, W)`` one under another as a PNG."""
    frames = to_uint8_frames(video)
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    Image.fromarray(np.concatenate(list(frames[idx]), axis=0)).save(path)
    return Path(path)

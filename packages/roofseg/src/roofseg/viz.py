"""Pictures people look at: coloured class maps with a legend, overlays, line drawings."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(names: Sequence[str]) -> np.ndarray:
    """``(len(names), 3)`` uint8 colours: evenly spaced hues, ``background`` black, ``flat`` grey."""
    n = len(names)
    cols = []
    for i, name in enumerate(names):
        if name == "background":
            cols.append((0, 0, 0))
        elif name == "flat":
            cols.append((160, 160, 160))
        else:
            r, g, b = colorsys.hsv_to_rgb(i / max(1, n), 0.85, 1.0)
            cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(cols, dtype=np.uint8)


def colorize(class_map: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """``(H, W)`` int class map -> ``(H, W, 3)`` uint8 RGB (indices outside ``names`` white)."""
    pal = np.concatenate([palette(names), np.full((256 - len(names), 3), 255, np.uint8)])
    return pal[np.clip(class_map, 0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, color: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend ``color`` ``(H, W, 3)`` onto ``image`` ``(H, W, 3)`` uint8 where ``mask`` is True."""
    out = image.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * color[mask].astype(np.float32)
    return out.astype(np.uint8)


def with_legend(rgb: np.ndarray, names: Sequence[str], present: Sequence[int] | None = None) -> Image.Image:
    """``rgb`` with a legend column on the right listing ``names`` (only ``present`` indices if given)."""
    pal = palette(names)
    idx = list(present) if present is not None else list(range(len(names)))
    font = ImageFont.load_default()
    row = 16
    h = max(rgb.shape[0], row * len(idx) + 8)
    canvas = Image.new("RGB", (rgb.shape[1] + 130, h), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, i in enumerate(idx):
        y = 4 + j * row
        draw.rectangle([rgb.shape[1] + 6, y, rgb.shape[1] + 18, y + 12], fill=tuple(int(c) for c in pal[i]),
                       outline=(0, 0, 0))
        draw.text((rgb.shape[1] + 24, y), names[i], fill=(0, 0, 0), font=font)
    return canvas


def class_map_figure(image: np.ndarray, class_map: np.ndarray, names: Sequence[str],
                     background: int | None = None) -> Image.Image:
    """Tile | class-map overlay side by side, with a legend of the classes present."""
    bg = names.index("background") if background is None and "background" in names else background
    col = colorize(class_map, names)
    mask = class_map != bg if bg is not None else np.ones(class_map.shape, bool)
    present = [int(c) for c in np.unique(class_map) if c < len(names)]
    return with_legend(np.concatenate([image, overlay(image, col, mask, 0.6)], axis=1), names, present)

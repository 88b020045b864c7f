"""One image loader for every domain: EXIF orientation applied, then RGB.

Phones store portrait photos as landscape pixels plus an EXIF ``Orientation`` tag (6 = rotate 90
degrees clockwise to display). Browsers and viewers apply it; ``Image.open(path).convert("RGB")`` does
not, so a model would see the photo lying on its side. :func:`open_rgb` applies it with
``PIL.ImageOps.exif_transpose`` (TIFF/EXIF 2.3 Orientation tag 274, values 1-8) before converting.

Use it for photos (classification, prediction on user photos). Do not use it for images whose label
masks were drawn on the stored pixel grid (segmentation datasets) unless the mask is transposed the
same way: pass ``exif=False`` there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def open_rgb(path: str | Path, *, exif: bool = True) -> Image.Image:
    """Decode ``path`` fully into an RGB ``PIL.Image`` (the file is closed on return).

    Args:
        path: any format PIL reads (JPEG, PNG, WebP, TIFF, BMP...).
        exif: apply the EXIF orientation tag (``ImageOps.exif_transpose``) before converting.

    Returns:
        Mode ``"RGB"`` image, width x height as displayed (after the EXIF rotation/flip).

    Raises:
        FileNotFoundError: no such file. ``PIL.UnidentifiedImageError`` (an ``OSError``): not an image.
        OSError / ValueError / SyntaxError: truncated or corrupt data (PIL's own errors, unchanged, so
        callers keep translating them into their one-line data errors).
    """
    with Image.open(path) as im:
        im.load()
        if exif:
            im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def load_rgb(path: str | Path, *, exif: bool = True) -> np.ndarray:
    """:func:`open_rgb` as a ``(H, W, 3) uint8`` array (H, W as displayed)."""
    return np.asarray(open_rgb(path, exif=exif))

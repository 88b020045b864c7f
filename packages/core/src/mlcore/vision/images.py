"""Decoding photos and the classification dataset that records unreadable ones in a :class:`BadSampleLog`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import tv_tensors
from tqdm import tqdm

from mlcore.data import BadSampleLog
from mlcore.images import load_rgb
from mlcore.vision.index import DataError, Sample


def load_image(path: str | Path) -> tv_tensors.Image:
    """Decode an image file to ``tv_tensors.Image (3, H, W) uint8`` RGB (grey/CMYK/palette converted), with
    its EXIF orientation applied (:func:`mlcore.images.load_rgb`), i.e. as a viewer displays the photo.

    Raises ``DataError`` naming ``path`` when it is missing, not an image, or truncated/corrupt.
    """
    try:
        array = load_rgb(path)
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises SyntaxError for some broken headers
        raise DataError(f"cannot read image {path}: {err}") from err
    return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous())


def check_images(samples: Sequence[Sample], *, full_decode: bool = False) -> list[Path]:
    """Paths of the samples whose image cannot be opened, in input order (empty when all are fine).

    Default: reads each file header (``PIL.Image.open`` + ``verify()``: missing files, non-images, broken
    headers; ~0.1 ms per file). ``full_decode=True`` decodes every pixel too, which also finds files
    truncated after the header (~3 ms per 512 px JPEG). Shows a tqdm bar on a terminal.
    """
    bad = []
    for sample in tqdm(samples, desc="check images", disable=None):
        try:
            with Image.open(sample.path) as im:
                if full_decode:
                    im.convert("RGB")
                else:
                    im.verify()
        except (OSError, ValueError, SyntaxError):
            bad.append(sample.path)
    return bad


class ImageDataset(torch.utils.data.Dataset):
    """Labelled photos for classification.

    ``__getitem__(i)`` returns ``{"image": transform(load_image(path)) as a plain tensor (e.g. (3, S, S)
    float32 normalised, or uint8), "label": () int64, "index": int}``.

    Args:
        samples: from :meth:`mlcore.vision.ImageIndex.samples`.
        transform: a callable on ``tv_tensors.Image (3, H, W) uint8``; ``None`` returns the decoded image.
        bad_samples: ``None``: an unreadable image raises ``DataError`` naming it (and ``hint``). A
            :class:`mlcore.data.BadSampleLog`: the image is recorded there (logged once, counted exactly
            across loader workers) and the next readable sample (``i + 1``, ``i + 2``, ... wrapping;
            deterministic) is returned instead, with that sample's ``index``; ``DataError`` still when no
            sample is readable.
        hint: appended to the error of an unreadable image when ``bad_samples`` is ``None`` (a training
            command names its ``--skip-bad-images`` flag here).
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[tv_tensors.Image], Any] | None, *,
                 bad_samples: BadSampleLog | None = None, hint: str = "") -> None:
        self.samples = list(samples)
        self.transform = transform
        self.bad_samples = bad_samples
        self.hint = hint

    def __len__(self) -> int:
        return len(self.samples)

    def _item(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = load_image(sample.path)
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image.as_subclass(torch.Tensor).contiguous(),
                "label": torch.tensor(sample.label, dtype=torch.int64), "index": index}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.bad_samples is None:
            try:
                return self._item(index)
            except DataError as err:
                if not self.hint:
                    raise
                raise DataError(f"{err}; {self.hint}") from err
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n
            try:
                return self._item(i)
            except DataError as err:
                self.bad_samples.record(self.samples[i].path, str(err))
        raise DataError(f"no readable image among the {n} samples (first bad: {self.samples[index].path})")

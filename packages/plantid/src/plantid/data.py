"""Plant image data: ImageFolder and PlantNet-300K indexes, a stratified seeded split, two CPU pipelines.

Layouts (``root`` may be the dataset folder itself or the folder that contains it):

- **ImageFolder** (e.g. Flowers Recognition, 5 classes): ``CLASS/NAME.jpg``. Classes are the sorted
  sub-folder names; ``val`` is carved from all images per class (:func:`stratified_split`,
  ``val_fraction``, ``seed``); there is no ``test`` split.
- **PlantNet-300K** (Garcin et al., NeurIPS 2021 Datasets and Benchmarks): ``images/{train,val,test}/
  SPECIES_ID/*.jpg`` + ``plantnet300K_species_id_2_name.json`` (``{"SPECIES_ID": "Genus species ..."}``),
  inside ``plantnet_300K/`` or directly in ``root``. The official splits are used as they are; class
  order is the sorted species ids found in ``train``. Without the JSON the ids are their own names.

Two CPU pipelines (the seed's ``--use_gpu_aug`` switch):

- ``--gpu-aug`` (:func:`decode_transform`): workers only decode and resize to ``(3, S, S) uint8``;
  augmentation and normalisation run on the training device (:mod:`plantid.augment`).
- ``--no-gpu-aug`` (:func:`train_transform` / :func:`eval_transform`): the full torchvision pipeline
  in the workers, giving ``(3, S, S) float32`` ImageNet-normalised tensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from mlcore.data import IMAGENET_MEAN, IMAGENET_STD, BadSampleLog, stratified_split
from mlcore.images import load_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPECIES_NAMES_FILE = "plantnet300K_species_id_2_name.json"

Split = Literal["train", "val", "test", "all"]


class DataError(ValueError):
    """Bad dataset on disk: unknown layout, empty class list, unreadable image or names file."""


@dataclass(frozen=True)
class PlantSample:
    """One image: ``path`` on disk and ``label`` (index into :attr:`PlantIndex.classes`)."""

    path: Path
    label: int


@dataclass
class PlantIndex:
    """Classes and per-split samples of one dataset (built by :func:`load_index`).

    Attributes:
        root: the dataset folder found.
        layout: ``"imagefolder"`` or ``"plantnet300k"``.
        classes: class folder names (species ids for PlantNet), in label order.
        labels: human-readable names, same order.
        splits: ``train``/``val`` (+ ``test`` for PlantNet) -> samples sorted by path.
    """

    root: Path
    layout: str
    classes: list[str]
    labels: list[str]
    splits: dict[str, list[PlantSample]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.classes)

    def samples(self, split: Split) -> list[PlantSample]:
        """Samples of ``split`` (``all``: every split). Raises ``DataError`` for an unknown or absent split."""
        if split == "all":
            return [s for name in ("train", "val", "test") for s in self.splits.get(name, [])]
        if split not in ("train", "val", "test"):
            raise DataError(f"split must be train, val, test or all, got {split!r}")
        if split not in self.splits:
            raise DataError(f"dataset at {self.root} ({self.layout}) has no {split} split")
        return list(self.splits[split])


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _find_plantnet(root: Path) -> Path | None:
    for base in (root, root / "plantnet_300K", root / "plantnet300K"):
        if (base / "images" / "train").is_dir():
            return base
    return None


def _load_imagefolder(base: Path, val_fraction: float, seed: int) -> PlantIndex:
    classes = [d.name for d in _class_dirs(base)]
    samples = [PlantSample(p, label) for label, name in enumerate(classes) for p in _images_in(base / name)]
    if len(classes) < 2 or not samples:
        raise DataError(f"no dataset in {base}: expected ImageFolder CLASS/NAME.jpg with >= 2 class folders, "
                        f"or PlantNet-300K images/{{train,val,test}}/SPECIES_ID/*.jpg")
    train, val = stratified_split(samples, val_fraction, seed)
    return PlantIndex(base, "imagefolder", classes, list(classes), {"train": train, "val": val})


def _load_plantnet(base: Path) -> PlantIndex:
    images = base / "images"
    classes = [d.name for d in _class_dirs(images / "train")]
    if not classes:
        raise DataError(f"{images / 'train'}: no SPECIES_ID folders")
    names_file = next((p for p in (base / SPECIES_NAMES_FILE, base.parent / SPECIES_NAMES_FILE) if p.is_file()), None)
    names: dict[str, str] = {}
    if names_file is not None:
        try:
            names = json.loads(names_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"cannot parse {names_file}: {err}") from err
        if not isinstance(names, dict):
            raise DataError(f"{names_file}: expected a JSON object species id -> name")
    lookup = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[PlantSample]] = {}
    for split in ("train", "val", "test"):
        folder = images / split
        if not folder.is_dir():
            continue
        out = []
        for d in _class_dirs(folder):
            if d.name not in lookup:
                raise DataError(f"{d}: species {d.name!r} has no folder in {images / 'train'}")
            out += [PlantSample(p, lookup[d.name]) for p in _images_in(d)]
        splits[split] = sorted(out, key=lambda s: str(s.path))
    if "val" not in splits:
        raise DataError(f"{images / 'val'}: missing (PlantNet-300K ships train, val and test)")
    return PlantIndex(base, "plantnet300k", classes, [str(names.get(c, c)) for c in classes], splits)


def load_index(root: str | Path, *, val_fraction: float = 0.2, seed: int = 0) -> PlantIndex:
    """Find and index a plant dataset under ``root`` (PlantNet-300K first, else ImageFolder).

    Raises ``DataError`` (one line naming the folder or file) when ``root`` is not a folder, holds
    neither layout, or PlantNet's species-name JSON is unreadable.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist or is not a folder")
    plantnet = _find_plantnet(root)
    if plantnet is not None:
        return _load_plantnet(plantnet)
    return _load_imagefolder(root, val_fraction, seed)


# ------------------------------------------------------------------------------------------ transforms

def decode_transform(size: int) -> v2.Compose:
    """``--gpu-aug`` worker side: ``Resize((size, size))`` (bilinear, antialiased) only.

    ``tv_tensors.Image (3, H, W) uint8`` -> ``(3, size, size) uint8``; everything random happens on the
    training device.
    """
    return v2.Compose([v2.Resize((size, size), antialias=True)])


def train_transform(size: int, *, scale_min: float = 0.6, rotation: float = 20.0, jitter: float = 0.3,
                    blur_p: float = 0.1, vflip_p: float = 0.5) -> v2.Compose:
    """``--no-gpu-aug`` training pipeline (the seed's torchvision augmentation), in the workers.

    ``tv_tensors.Image (3, H, W) uint8`` -> ``(3, size, size) float32`` ImageNet-normalised:
    RandomResizedCrop(scale ``scale_min``-1), horizontal flip (p 0.5), vertical flip (``vflip_p``),
    rotation (+-``rotation`` degrees), ColorJitter(``jitter`` brightness/contrast/saturation, hue
    ``jitter``/3), Gaussian blur (kernel 5, sigma 0.1-2, p ``blur_p``). Same operations and
    parameters as :class:`plantid.augment.DeviceAugmentation`.
    """
    ops: list[v2.Transform] = [v2.RandomResizedCrop((size, size), scale=(scale_min, 1.0), antialias=True),
                               v2.RandomHorizontalFlip(p=0.5)]
    if vflip_p > 0:
        ops.append(v2.RandomVerticalFlip(p=vflip_p))
    if rotation > 0:
        ops.append(v2.RandomRotation(rotation))
    if jitter > 0:
        ops.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 3))
    if blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=blur_p))
    return v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(size: int) -> v2.Compose:
    """Evaluation: ``Resize((size, size))`` + ImageNet normalisation -> ``(3, size, size) float32``."""
    return v2.Compose([v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# -------------------------------------------------------------------------------------------- dataset

def load_image(path: str | Path) -> tv_tensors.Image:
    """Decode an image file to ``tv_tensors.Image (3, H, W) uint8`` RGB.

    Raises ``DataError`` naming ``path`` when it is missing, not an image, or truncated.
    """
    try:
        array = load_rgb(path)  # EXIF orientation applied, then RGB
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises SyntaxError for some broken headers
        raise DataError(f"cannot read image {path}: {err}") from err
    return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous())


class PlantDataset(torch.utils.data.Dataset):
    """Plant photos for classification.

    ``__getitem__(i)`` returns ``{"image": (3, S, S) uint8 or float32 (per ``transform``), "label": ()
    int64, "index": int}``.

    Args:
        samples: from :meth:`PlantIndex.samples`.
        transform: a callable on ``tv_tensors.Image (3, H, W) uint8``.
        bad_samples: ``None``: a corrupt image raises ``DataError`` naming it. A
            :class:`mlcore.data.BadSampleLog`: the image is recorded there (logged once, counted exactly
            across loader workers) and the next readable sample (``i + 1``, wrapping; deterministic) is
            returned instead, so one file never kills a long run and is never skipped silently.
    """

    def __init__(self, samples: Sequence[PlantSample], transform: Callable[[Any], torch.Tensor], *,
                 bad_samples: BadSampleLog | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.bad_samples = bad_samples

    def __len__(self) -> int:
        return len(self.samples)

    def _item(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = self.transform(load_image(sample.path))
        return {"image": image.as_subclass(torch.Tensor).contiguous(),
                "label": torch.tensor(sample.label, dtype=torch.int64), "index": index}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.bad_samples is None:
            return self._item(index)
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n
            try:
                return self._item(i)
            except DataError as err:
                self.bad_samples.record(self.samples[i].path, str(err))
        raise DataError(f"no readable image among the {n} samples (first bad: {self.samples[index].path})")

"""Food-101 data: index discovery (own layout or parquet metadata), stratified val split, augmentation.

Food-101 (Bossard, Guillaumin and Van Gool, "Food-101 - Mining Discriminative Components with Random
Forests", ECCV 2014) in its own layout; ``root`` may be the ``food-101`` folder or the folder holding it::

    food-101/images/CLASS/ID.jpg
    food-101/meta/classes.txt          class folder names, one per line (defines label order)
    food-101/meta/labels.txt           human-readable names, same order (optional: "apple_pie" -> "Apple pie")
    food-101/meta/train.txt, test.txt  lines "CLASS/ID" without extension (.json twins used when missing:
                                       {"CLASS": ["CLASS/ID", ...]})

Alternative index (the plan's ``data/processed/food-101``): ``train.parquet`` (+ optional ``val.parquet``,
``test.parquet``) with an image-path column (``image_path`` or ``path``; relative to the parquet's folder
or to its ``images/``) and a label column (``label`` or ``class``: class names, or integer indices named by
``meta/classes.txt`` when present).

``val`` is carved from ``train`` per class (stratified, seeded) unless a ``val.parquet`` exists; ``test`` is
``test.txt`` / ``test.parquet``. The official Food-101 split has 750 train + 250 test images per class.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm import tqdm

from mlcore.data import IMAGENET_MEAN, IMAGENET_STD, BadSampleLog, stratified_split  # noqa: F401  (the constants re-exported)
from mlcore.images import load_rgb

PATH_COLUMNS = ("image_path", "path")
LABEL_COLUMNS = ("label", "class")

Split = Literal["train", "val", "test", "all"]


class DataError(ValueError):
    """Bad dataset on disk: unknown layout, missing meta/list file, unknown class, missing or corrupt image."""


@dataclass(frozen=True)
class FoodSample:
    """One image: ``path`` (file on disk) and ``label`` (index into :attr:`FoodIndex.classes`)."""

    path: Path
    label: int


@dataclass
class FoodIndex:
    """The class list and the per-split samples of one dataset (built by :func:`load_index`).

    Attributes:
        root: the dataset folder that was found (``food-101`` or the parquet folder).
        classes: class folder names (``apple_pie``), in label order.
        labels: human-readable names (``Apple pie``), same order.
        splits: ``{"train", "val", "test"}`` -> samples, each sorted by path.
    """

    root: Path
    classes: list[str]
    labels: list[str]
    splits: dict[str, list[FoodSample]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes (101 for full Food-101)."""
        return len(self.classes)

    def samples(self, split: Split) -> list[FoodSample]:
        """Samples of ``split``; ``all`` is train + val + test. Raises ``DataError`` for an unknown split,
        or for ``test`` when the dataset has none (a parquet index without ``test.parquet``)."""
        if split == "all":
            return [s for name in ("train", "val", "test") for s in self.splits.get(name, [])]
        if split not in ("train", "val", "test"):
            raise DataError(f"split must be train, val, test or all, got {split!r}")
        if split not in self.splits:
            raise DataError(f"dataset at {self.root} has no {split} split")
        return list(self.splits[split])


# ----------------------------------------------------------------------------------------------- index


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _default_label(name: str) -> str:
    # Food-101's labels.txt is exactly this transform of classes.txt ("apple_pie" -> "Apple pie").
    return name.replace("_", " ").capitalize()


def _is_food101(folder: Path) -> bool:
    return (folder / "meta").is_dir() or ((folder / "images").is_dir() and not (folder / "train.parquet").is_file())


def _locate(root: Path) -> tuple[str, Path]:
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist or is not a folder")
    for folder in (root, root / "food-101"):
        if (folder / "train.parquet").is_file():
            return "parquet", folder
        if folder.is_dir() and _is_food101(folder):
            return "food101", folder
    raise DataError(
        f"no Food-101 dataset in {root}: expected meta/classes.txt + images/CLASS/ID.jpg or train.parquet,"
        " in that folder or in its food-101/ sub-folder"
    )


def _meta_classes(meta: Path) -> tuple[list[str], list[str]]:
    classes_file = meta / "classes.txt"
    if not classes_file.is_file():
        raise DataError(f"missing meta file {classes_file}: expected class folder names, one per line")
    classes = _read_lines(classes_file)
    if not classes or len(set(classes)) != len(classes):
        raise DataError(f"{classes_file} must list distinct class names, one per line ({len(classes)} lines)")
    labels_file = meta / "labels.txt"
    labels = _read_lines(labels_file) if labels_file.is_file() else [_default_label(c) for c in classes]
    if len(labels) != len(classes):
        raise DataError(f"{labels_file} has {len(labels)} names but {classes_file} has {len(classes)} classes")
    return classes, labels


def _list_entries(meta: Path, split: str) -> tuple[Path, list[str]]:
    """``(file read, ["CLASS/ID", ...])`` from ``SPLIT.txt``, else ``SPLIT.json``."""
    txt, js = meta / f"{split}.txt", meta / f"{split}.json"
    if txt.is_file():
        return txt, _read_lines(txt)
    if js.is_file():
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"cannot parse {js}: {err}") from err
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise DataError(f"{js} must map each class to a list of 'CLASS/ID' entries")
        return js, [str(e) for entries in data.values() for e in entries]
    raise DataError(f"missing meta file {txt} (or {js.name}): expected lines 'CLASS/ID' without extension")


def _food101_splits(base: Path, check_files: bool) -> tuple[list[str], list[str], dict[str, list[FoodSample]]]:
    meta, images = base / "meta", base / "images"
    classes, labels = _meta_classes(meta)
    lookup = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[FoodSample]] = {}
    for split in ("train", "test"):
        source, entries = _list_entries(meta, split)
        out = []
        for n, entry in enumerate(entries, 1):
            cls = entry.split("/", 1)[0]
            if cls not in lookup or "/" not in entry:
                raise DataError(
                    f"{source} entry {n} {entry!r}: class {cls!r} is not in {meta / 'classes.txt'}"
                    " (expected 'CLASS/ID')"
                )
            path = images / f"{entry}.jpg"
            if check_files and not path.is_file():
                raise DataError(f"image {path} listed in {source} (entry {n}) is missing")
            out.append(FoodSample(path, lookup[cls]))
        splits[split] = sorted(out, key=lambda s: str(s.path))
    return classes, labels, splits


def _pick_column(names: Sequence[str], wanted: Sequence[str], what: str, source: Path) -> str:
    for name in wanted:
        if name in names:
            return name
    raise DataError(f"{source} has no {what} column: expected one of {', '.join(wanted)}, got {', '.join(names)}")


def _read_parquet(path: Path) -> tuple[list[str], list[Any]]:
    import pyarrow.parquet as pq  # only needed for this index format

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for unreadable files
        raise DataError(f"cannot read parquet {path}: {err}") from err
    path_col = _pick_column(table.column_names, PATH_COLUMNS, "image path", path)
    label_col = _pick_column(table.column_names, LABEL_COLUMNS, "label", path)
    return [str(p) for p in table.column(path_col).to_pylist()], table.column(label_col).to_pylist()


def _parquet_splits(base: Path, check_files: bool) -> tuple[list[str], list[str], dict[str, list[FoodSample]]]:
    tables = {s: _read_parquet(base / f"{s}.parquet") for s in ("train", "val", "test")
              if (base / f"{s}.parquet").is_file()}
    all_labels = [v for _, values in tables.values() for v in values]
    has_meta = (base / "meta" / "classes.txt").is_file()
    if all(isinstance(v, str) for v in all_labels):
        classes, labels = _meta_classes(base / "meta") if has_meta else (sorted(set(all_labels)), [])
        labels = labels or [_default_label(c) for c in classes]
        lookup = {c: i for i, c in enumerate(classes)}
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in all_labels):
        if has_meta:
            classes, labels = _meta_classes(base / "meta")
        else:
            classes = [str(i) for i in range(max(all_labels, default=-1) + 1)]
            labels = list(classes)
        lookup = {i: i for i in range(len(classes))}
    else:
        raise DataError(f"label columns in {base}/*.parquet must be all class names or all integer indices")
    splits: dict[str, list[FoodSample]] = {}
    for split, (paths, values) in tables.items():
        source = base / f"{split}.parquet"
        out = []
        for row, (rel, value) in enumerate(zip(paths, values, strict=True)):
            if value not in lookup:
                where = base / "meta" / "classes.txt" if has_meta else f"0..{len(classes) - 1}"
                raise DataError(f"{source} row {row}: label {value!r} is not in {where}")
            candidates = [Path(rel)] if Path(rel).is_absolute() else [base / rel, base / "images" / rel]
            path = next((p for p in candidates if p.is_file()), candidates[0])
            if check_files and not path.is_file():
                tried = " or ".join(str(p) for p in candidates)
                raise DataError(f"image {tried} listed in {source} (row {row}) is missing")
            out.append(FoodSample(path, lookup[value]))
        splits[split] = sorted(out, key=lambda s: str(s.path))
    return classes, labels, splits


def load_index(
    root: str | Path, *, val_fraction: float = 0.15, seed: int = 0, check_files: bool = True
) -> FoodIndex:
    """Find and read a Food-101 dataset under ``root`` (see the module docstring for the layouts).

    ``val`` is :func:`stratified_split` of ``train`` (``val_fraction``, ``seed``) unless a ``val.parquet``
    exists. ``check_files`` stats every listed image (about 1 s per 100k files on a local disk); pixels are
    not read here (see :func:`check_images`).

    Raises ``DataError`` (one line, naming the file) for: no known layout, a missing ``meta/classes.txt`` or
    split list (``train.txt`` and ``train.json`` both absent), a class not in ``classes.txt``, a listed
    image that does not exist, or a parquet without an image-path / label column.
    """
    kind, base = _locate(Path(root).expanduser())
    if kind == "food101":
        classes, labels, splits = _food101_splits(base, check_files)
    else:
        classes, labels, splits = _parquet_splits(base, check_files)
    if "val" not in splits:
        splits["train"], splits["val"] = stratified_split(splits["train"], val_fraction, seed)
    if not splits["train"]:
        raise DataError(f"dataset at {base} has no training images")
    return FoodIndex(root=base, classes=classes, labels=labels, splits=splits)


# ------------------------------------------------------------------------------------------ transforms


def _to_float_normalised() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(size: int = 300) -> v2.Compose:
    """Training augmentation: ``tv_tensors.Image (3, H, W) uint8`` -> ``(3, size, size) float32``, ImageNet-normalised.

    Follows the plan's Albumentations pipeline with torchvision.transforms.v2 (all randomness drawn from the
    global torch RNG at call time, so mlcore's per-sample re-seeding makes it reproducible):

    - RandomResizedCrop(size, scale 0.8-1.0, ratio 0.9-1.1), horizontal flip (p 0.5);
    - ShiftScaleRotate(0.1, 0.1, 15 degrees, p 0.5) -> RandomAffine(15, translate 0.1, scale 0.9-1.1), p 0.5;
    - ColorJitter(0.2, 0.2, 0.2, hue 0.1, p 0.5), then RandomBrightnessContrast(0.2, 0.2, p 0.5) as a
      second brightness/contrast-only ColorJitter (p 0.5);
    - GaussianBlur kernel 3-5 -> GaussianBlur(5, sigma 0.1-2.0) (v2 has a fixed kernel, random sigma), p 0.2;
    - GaussNoise(var 10-50 on 0-255) -> v2.GaussianNoise(sigma 0.02 on 0-1, ~= sqrt(30)/255, clipped), p 0.2;
    - ImageNet normalisation;
    - CoarseDropout(8 holes up to 30x30 px, p 0.3) -> one RandomErasing rectangle of 2-8% of the area
      (about 8 such holes' total), value 0 (= the mean colour after normalisation), p 0.3. v2 has no
      multi-hole dropout; one larger hole is the closest library transform.
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop((size, size), scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.RandomAffine(degrees=15.0, translate=(0.1, 0.1), scale=(0.9, 1.1))], p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)], p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.5),
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.GaussianNoise(mean=0.0, sigma=0.02, clip=True)], p=0.2),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            v2.RandomErasing(p=0.3, scale=(0.02, 0.08), ratio=(0.5, 2.0), value=0.0),
        ]
    )


def eval_transform(size: int = 300) -> v2.Compose:
    """Evaluation: ``Resize((size, size))`` (bilinear, antialiased; aspect not kept, as the plan's
    ``A.Resize(300, 300)``) + ImageNet normalisation -> ``(3, size, size) float32``. Deterministic."""
    return v2.Compose([v2.Resize((size, size), antialias=True), *_to_float_normalised()])


# -------------------------------------------------------------------------------------------- dataset


def load_image(path: str | Path) -> tv_tensors.Image:
    """Decode an image file to ``tv_tensors.Image (3, H, W) uint8`` RGB (grey/CMYK/palette converted).

    Raises ``DataError`` naming ``path`` when it is missing, not an image, or truncated/corrupt.
    """
    try:
        array = load_rgb(path)  # EXIF orientation applied, then RGB
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises SyntaxError for some broken headers
        raise DataError(f"cannot read image {path}: {err}") from err
    return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous())


def check_images(samples: Sequence[FoodSample], *, full_decode: bool = False) -> list[Path]:
    """Paths of the samples whose image cannot be opened, in input order (empty when all are fine).

    Default: reads each file header (``PIL.Image.open`` + ``verify()``: missing files, non-images, broken
    headers; ~0.1 ms per file). ``full_decode=True`` decodes every pixel too, which also finds files
    truncated after the header (~3 ms per 512 px JPEG). Shows a tqdm bar on a terminal.
    """
    bad = []
    for sample in tqdm(samples, desc="foodrec check images", disable=None):
        try:
            with Image.open(sample.path) as im:
                if full_decode:
                    im.convert("RGB")
                else:
                    im.verify()
        except (OSError, ValueError, SyntaxError):
            bad.append(sample.path)
    return bad


class FoodDataset(torch.utils.data.Dataset):
    """Food-101 images for classification.

    ``__getitem__(i)`` returns ``{"image": (3, S, S) float32 (per ``transform``, ImageNet-normalised),
    "label": () int64 tensor (class index), "index": int}``.

    Args:
        samples: from :meth:`FoodIndex.samples`.
        transform: :func:`train_transform` / :func:`eval_transform` (any callable on a ``tv_tensors.Image
            (3, H, W) uint8``); ``None`` returns the decoded uint8 image.
        skip_bad_images: a corrupt/unreadable image raises ``DataError`` naming its path when ``False``.
            When ``True`` it is recorded in :attr:`bad_log` (an :class:`mlcore.BadSampleLog`, shared by
            every loader worker, so :attr:`bad_images` is exact for any ``num_workers``) and the next
            readable sample (``i + 1``, ``i + 2``, ... wrapping; deterministic) is returned instead, with
            that sample's ``index``. ``DataError`` is still raised when no sample is readable.
        bad_log: where skipped images are recorded (default: a new one); datasets of one run may share it.
    """

    def __init__(
        self,
        samples: Sequence[FoodSample],
        transform: Callable[[tv_tensors.Image], torch.Tensor] | None,
        *,
        skip_bad_images: bool = False,
        bad_log: BadSampleLog | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.bad_log = bad_log if bad_log is not None else BadSampleLog()

    @property
    def bad_images(self) -> list[Path]:
        """Paths of the images skipped so far (by any loader worker), each once, sorted."""
        return [Path(p) for p in self.bad_log.paths()]

    def __len__(self) -> int:
        return len(self.samples)

    def _item(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = load_image(sample.path)
        if self.transform is not None:
            image = self.transform(image)
        return {
            "image": image.as_subclass(torch.Tensor).contiguous(),
            "label": torch.tensor(sample.label, dtype=torch.int64),
            "index": index,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.skip_bad_images:
            return self._item(index)
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n
            try:
                return self._item(i)
            except DataError as err:
                self.bad_log.record(self.samples[i].path, str(err))
        raise DataError(f"no readable image among the {n} samples (first bad: {self.samples[index].path})")

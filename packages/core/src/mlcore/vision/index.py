"""Image-classification dataset indexes: Food-101, a parquet index, PlantNet-300K and ImageFolder, each with
train / val / test splits (``split.json`` records them in the run directory).

Layouts (``root`` may be the dataset folder itself or the folder that contains it), detected in this order
(parquet, PlantNet-300K, Food-101, ImageFolder):

- **PlantNet-300K** (Garcin et al., NeurIPS 2021 Datasets and Benchmarks): ``images/{train,val,test}/
  SPECIES_ID/*.jpg`` + ``plantnet300K_species_id_2_name.json`` (``{"SPECIES_ID": "Genus species ..."}``),
  inside ``plantnet_300K/`` or directly in ``root``. Official splits; class order is the sorted species
  ids found in ``train``; without the JSON the ids are their own names.
- **Food-101** (Bossard, Guillaumin and Van Gool, ECCV 2014), in ``root`` or ``root/food-101``::

      images/CLASS/ID.jpg
      meta/classes.txt            class folder names, one per line (defines label order)
      meta/labels.txt             display names, same order (optional: "apple_pie" -> "Apple pie")
      meta/train.txt, test.txt    lines "CLASS/ID" without extension (.json twins used when missing:
                                  {"CLASS": ["CLASS/ID", ...]})

- **parquet** (seed 002's ``data/processed/food-101``): ``train.parquet`` (+ optional ``val.parquet``,
  ``test.parquet``) with an image-path column (``image_path`` or ``path``; relative to the parquet's folder
  or to its ``images/``) and a label column (``label`` or ``class``: class names, or integer indices named
  by ``meta/classes.txt`` when present).
- **ImageFolder** (e.g. Flowers Recognition): ``CLASS/NAME.jpg``; classes are the sorted sub-folders.

Splits: a layout's own splits are used as they are. A missing ``test`` is carved once from all labelled
images by ``test_seed`` (:func:`mlcore.data.stratified_split`, ``test_fraction``), so it does not move
when ``--seed`` changes; a missing ``val`` is then carved from the rest by ``seed`` (``val_fraction``).
``val`` selects checkpoints and tunes presets, ``test`` is only reported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcore.data import SPLITS, DataError, Split, check_split, stratified_split, write_split_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""File suffixes (lower case) read as images from ImageFolder and PlantNet folders."""
SPECIES_NAMES_FILE = "plantnet300K_species_id_2_name.json"
PATH_COLUMNS = ("image_path", "path")
LABEL_COLUMNS = ("label", "class")


@dataclass(frozen=True)
class Sample:
    """One image: ``path`` (file on disk) and ``label`` (index into :attr:`ImageIndex.classes`)."""

    path: Path
    label: int


@dataclass
class ImageIndex:
    """The class list and the per-split samples of one dataset (built by :func:`load_index`).

    Attributes:
        root: the dataset folder found.
        layout: ``"food101"``, ``"parquet"``, ``"plantnet300k"`` or ``"imagefolder"``.
        classes: class folder names / ids, in label order.
        labels: display names, same order.
        splits: ``train`` / ``val`` / ``test`` -> samples, each sorted by path.
        carved: how the splits the layout lacks were made (fractions and seeds), for ``split.json``.
    """

    root: Path
    layout: str
    classes: list[str]
    labels: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    carved: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.classes)

    def samples(self, split: Split) -> list[Sample]:
        """Samples of ``split`` (``all``: train + val + test). Raises ``DataError`` for an unknown or absent split."""
        if split == "all":
            return [s for name in SPLITS for s in self.splits.get(name, [])]
        check_split(split)
        if split not in self.splits:
            raise DataError(f"dataset at {self.root} ({self.layout}) has no {split} split")
        return list(self.splits[split])

    def write_split_json(self, path: str | Path) -> Path:
        """Write ``split.json`` (:func:`mlcore.data.write_split_json`): root, layout, classes, how missing
        splits were carved, per-split counts and ``[image path, label]`` of each split (paths relative to
        ``root`` where possible). Returns the path."""
        return write_split_json(path, {k: [(s.path, s.label) for s in v] for k, v in self.splits.items()},
                                root=self.root, layout=self.layout, classes=self.classes, carved=self.carved)


# ----------------------------------------------------------------------------------------------- helpers


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _default_label(name: str) -> str:
    # Food-101's labels.txt is exactly this transform of classes.txt ("apple_pie" -> "Apple pie").
    return name.replace("_", " ").capitalize()


def images_in(folder: Path) -> list[Path]:
    """Image files (by :data:`IMAGE_SUFFIXES`) directly in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# ----------------------------------------------------------------------------------------------- Food-101


def _is_food101(folder: Path) -> bool:
    return (folder / "meta").is_dir() or ((folder / "images").is_dir() and not (folder / "train.parquet").is_file())


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


def _food101(base: Path, check_files: bool) -> ImageIndex:
    meta, images = base / "meta", base / "images"
    classes, labels = _meta_classes(meta)
    lookup = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    for split in ("train", "test"):
        source, entries = _list_entries(meta, split)
        out = []
        for n, entry in enumerate(entries, 1):
            cls = entry.split("/", 1)[0]
            if cls not in lookup or "/" not in entry:
                raise DataError(f"{source} entry {n} {entry!r}: class {cls!r} is not in {meta / 'classes.txt'}"
                                " (expected 'CLASS/ID')")
            path = images / f"{entry}.jpg"
            if check_files and not path.is_file():
                raise DataError(f"image {path} listed in {source} (entry {n}) is missing")
            out.append(Sample(path, lookup[cls]))
        splits[split] = sorted(out, key=lambda s: str(s.path))
    return ImageIndex(base, "food101", classes, labels, splits)


def _pick_column(names: Sequence[str], wanted: Sequence[str], what: str, source: Path) -> str:
    for name in wanted:
        if name in names:
            return name
    raise DataError(f"{source} has no {what} column: expected one of {', '.join(wanted)}, got {', '.join(names)}")


def _read_parquet(path: Path) -> tuple[list[str], list[Any]]:
    import pyarrow.parquet as pq  # only needed for this index format

    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several unrelated types for unreadable files
        raise DataError(f"cannot read parquet {path}: {err}") from err
    path_col = _pick_column(table.column_names, PATH_COLUMNS, "image path", path)
    label_col = _pick_column(table.column_names, LABEL_COLUMNS, "label", path)
    return [str(p) for p in table.column(path_col).to_pylist()], table.column(label_col).to_pylist()


def _parquet(base: Path, check_files: bool) -> ImageIndex:
    tables = {s: _read_parquet(base / f"{s}.parquet") for s in SPLITS if (base / f"{s}.parquet").is_file()}
    all_labels = [v for _, values in tables.values() for v in values]
    has_meta = (base / "meta" / "classes.txt").is_file()
    if all(isinstance(v, str) for v in all_labels):
        classes, labels = _meta_classes(base / "meta") if has_meta else (sorted(set(all_labels)), [])
        labels = labels or [_default_label(c) for c in classes]
        lookup: dict[Any, int] = {c: i for i, c in enumerate(classes)}
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in all_labels):
        if has_meta:
            classes, labels = _meta_classes(base / "meta")
        else:
            classes = [str(i) for i in range(max(all_labels, default=-1) + 1)]
            labels = list(classes)
        lookup = {i: i for i in range(len(classes))}
    else:
        raise DataError(f"label columns in {base}/*.parquet must be all class names or all integer indices")
    splits: dict[str, list[Sample]] = {}
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
            out.append(Sample(path, lookup[value]))
        splits[split] = sorted(out, key=lambda s: str(s.path))
    return ImageIndex(base, "parquet", classes, labels, splits)


# --------------------------------------------------------------------------------- PlantNet / ImageFolder


def _find_plantnet(root: Path) -> Path | None:
    for base in (root, root / "plantnet_300K", root / "plantnet300K"):
        if (base / "images" / "train").is_dir():
            return base
    return None


def _plantnet(base: Path) -> ImageIndex:
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
    splits: dict[str, list[Sample]] = {}
    for split in SPLITS:
        folder = images / split
        if not folder.is_dir():
            continue
        out = []
        for d in _class_dirs(folder):
            if d.name not in lookup:
                raise DataError(f"{d}: species {d.name!r} has no folder in {images / 'train'}")
            out += [Sample(p, lookup[d.name]) for p in images_in(d)]
        splits[split] = sorted(out, key=lambda s: str(s.path))
    if "val" not in splits:
        raise DataError(f"{images / 'val'}: missing (PlantNet-300K ships train, val and test)")
    return ImageIndex(base, "plantnet300k", classes, [str(names.get(c, c)) for c in classes], splits)


def _imagefolder(base: Path, expected: str) -> ImageIndex:
    classes = [d.name for d in _class_dirs(base)]
    samples = [Sample(p, label) for label, name in enumerate(classes) for p in images_in(base / name)]
    if len(classes) < 2 or not samples:
        raise DataError(f"no dataset in {base}: expected {expected}")
    return ImageIndex(base, "imagefolder", classes, list(classes), {"train": samples})


def _carve(index: ImageIndex, val_fraction: float, test_fraction: float, seed: int, test_seed: int) -> None:
    """Add the splits the layout lacks: test from all labelled images (``test_seed``), then val (``seed``)."""
    if "test" not in index.splits and test_fraction > 0:
        pool = sorted(index.splits.pop("train") + index.splits.pop("val", []), key=lambda s: str(s.path))
        index.splits["train"], index.splits["test"] = stratified_split(pool, test_fraction, test_seed)
        index.carved["test"] = {"fraction": test_fraction, "seed": test_seed, "from": "all labelled images"}
    if "val" not in index.splits:
        index.splits["train"], index.splits["val"] = stratified_split(index.splits["train"], val_fraction, seed)
        index.carved["val"] = {"fraction": val_fraction, "seed": seed, "from": "train"}


LAYOUT_HELP = ("Food-101 (meta/classes.txt + images/CLASS/ID.jpg), train.parquet, PlantNet-300K "
               "(images/{train,val,test}/SPECIES_ID/*.jpg) or an ImageFolder (CLASS/NAME.jpg, >= 2 class folders)")


def load_index(root: str | Path, *, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0,
               test_seed: int = 0, check_files: bool = True) -> ImageIndex:
    """Find and index a classification dataset under ``root`` (see the module docstring for the layouts).

    Args:
        val_fraction: per-class fraction carved from train for ``val`` when the layout has no val split.
        test_fraction: per-class fraction carved once for ``test`` when the layout has none (0: no test).
        seed: seed of the val carve (the run's ``--seed``).
        test_seed: seed of the test carve, independent of ``seed`` so the test photos never change.
        check_files: stat every image listed by Food-101 / parquet lists (pixels are not read).

    Raises:
        DataError: one line naming the folder or file: ``root`` missing, no known layout, a missing meta or
            list file, an unknown class, a listed image missing, a parquet without its columns, an
            unreadable PlantNet names file, or no training images.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist or is not a folder")
    index: ImageIndex | None = None
    for folder in (root, root / "food-101"):
        if (folder / "train.parquet").is_file():
            index = _parquet(folder, check_files)
            break
    plantnet = _find_plantnet(root) if index is None else None
    if plantnet is not None:
        index = _plantnet(plantnet)
    for folder in (root, root / "food-101"):
        if index is None and folder.is_dir() and _is_food101(folder):
            index = _food101(folder, check_files)
    if index is None:
        index = _imagefolder(root, LAYOUT_HELP)
    _carve(index, val_fraction, test_fraction, seed, test_seed)
    if not index.splits.get("train"):
        raise DataError(f"dataset at {index.root} has no training images")
    return index

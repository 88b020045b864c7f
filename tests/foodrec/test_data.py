"""Food-101 data: the index (own layout, json fallback, parquet; mlcore.vision), stratified split, foodrec's
training augmentation, bad images."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from foodrec.data import train_transform
from mlcore.data import IMAGENET_MEAN, IMAGENET_STD, BadSampleLog, stratified_split
from mlcore.vision import DataError, ImageDataset, check_images
from mlcore.vision import Sample as FoodSample
from mlcore.vision import eval_transform as _eval_transform
from mlcore.vision import load_index as _load_index
from mlcore.vision.preprocess import DEFAULT_DATA_CONFIG
from tests.conftest import require_data


def load_index(root, **kw):
    """foodrec's defaults: val 0.15 of train (Food-101 ships its own test split)."""
    return _load_index(root, **{"val_fraction": 0.15, **kw})


def eval_transform(size: int):
    return _eval_transform({**DEFAULT_DATA_CONFIG, "input_size": (3, size, size)})


def FoodDataset(samples, transform, skip_bad_images=False):  # noqa: N802 - the dataset as foodrec builds it
    return ImageDataset(samples, transform, bad_samples=BadSampleLog() if skip_bad_images else None)


@pytest.fixture(scope="module")
def food_root() -> Path:
    """``MLDATA_ROOT/food101_sample`` (the folder holding ``food-101/``)."""
    return require_data("food101_sample")


def _write_jpeg(path: Path, size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 80, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=95)


def _tiny_food101(root: Path, per_class: int = 4) -> Path:
    """``root/food-101`` with 2 classes x ``per_class`` train images and 1 test image each."""
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    classes = ["apple_pie", "hot_dog"]
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    (base / "meta" / "labels.txt").write_text("Apple pie\nHot dog\n")
    train, test = [], []
    for c in classes:
        for i in range(per_class + 1):
            _write_jpeg(base / "images" / c / f"{i}.jpg")
            (test if i == per_class else train).append(f"{c}/{i}")
    (base / "meta" / "train.txt").write_text("\n".join(train) + "\n")
    (base / "meta" / "test.txt").write_text("\n".join(test) + "\n")
    return base


# ------------------------------------------------------------------------------------------ real sample


def test_sample_discovered_at_both_levels(food_root: Path) -> None:
    for root in (food_root, food_root / "food-101"):
        index = load_index(root)
        assert index.root == food_root / "food-101"
        assert index.num_classes == 15 and len(index.labels) == 15
        assert len(index.samples("train")) + len(index.samples("val")) == 163
        assert len(index.samples("test")) == 45
        assert len(index.samples("all")) == 208
    assert index.classes[0] == "apple_pie" and index.labels[0] == "Apple pie"
    assert all(" " in lbl or lbl[0].isupper() for lbl in index.labels)
    assert all(s.path.is_file() and s.path.suffix == ".jpg" for s in index.samples("all"))
    # each sample's label matches its class folder
    assert all(index.classes[s.label] == s.path.parent.name for s in index.samples("all"))


def test_stratified_split_on_sample(food_root: Path) -> None:
    index = load_index(food_root, val_fraction=0.15, seed=0)
    train, val = index.samples("train"), index.samples("val")
    assert not {s.path for s in train} & {s.path for s in val}
    per_class_val, per_class_all = Counter(s.label for s in val), Counter(s.label for s in train + val)
    assert set(per_class_val) == set(range(15))  # every class in val
    for label, n in per_class_all.items():
        assert per_class_val[label] == min(max(round(0.15 * n), 1), n - 1)
    assert load_index(food_root, seed=0).samples("val") == val  # deterministic
    assert load_index(food_root, seed=1).samples("val") != val  # the seed changes it
    assert load_index(food_root, val_fraction=0.0).samples("val") == []


def test_stratified_split_rules() -> None:
    samples = [FoodSample(Path(f"{c}/{i}.jpg"), c) for c in range(3) for i in range(c * 10 + 1)]  # 1, 11, 21
    train, val = stratified_split(samples, 0.2, seed=3)
    counts = Counter(s.label for s in val)
    assert counts == {1: 2, 2: 4}  # a 1-sample class stays in train; round(0.2 * 11) = 2, round(4.2) = 4
    assert sorted(train + val, key=samples.index) == samples
    assert train == [s for s in samples if s in train]  # input order kept
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(samples, 1.0)


def test_eval_and_train_dataset_on_sample(food_root: Path) -> None:
    index = load_index(food_root)
    samples = index.samples("test")[:3]
    ds = FoodDataset(samples, eval_transform(64))
    item = ds[1]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["label"].item() == samples[1].label
    assert item["index"] == 1
    assert torch.equal(ds[1]["image"], item["image"])  # eval is deterministic
    train_item = FoodDataset(samples, train_transform(64))[0]
    assert train_item["image"].shape == (3, 64, 64) and train_item["image"].dtype == torch.float32
    assert check_images(index.samples("all")) == []


# ------------------------------------------------------------------------------------------- layouts


def test_json_fallback_matches_txt(tmp_path: Path) -> None:
    base = _tiny_food101(tmp_path)
    from_txt = load_index(tmp_path)
    for split in ("train", "test"):
        entries = (base / "meta" / f"{split}.txt").read_text().split()
        grouped: dict[str, list[str]] = {}
        for e in entries:
            grouped.setdefault(e.split("/")[0], []).append(e)
        (base / "meta" / f"{split}.json").write_text(json.dumps(grouped))
        (base / "meta" / f"{split}.txt").unlink()
    from_json = load_index(tmp_path)
    for split in ("train", "val", "test"):
        assert from_json.samples(split) == from_txt.samples(split)
    assert len(from_json.samples("train")) + len(from_json.samples("val")) == 8


def test_labels_default_when_labels_txt_missing(tmp_path: Path) -> None:
    base = _tiny_food101(tmp_path)
    (base / "meta" / "labels.txt").unlink()
    assert load_index(base).labels == ["Apple pie", "Hot dog"]


def test_missing_meta_names_file(tmp_path: Path) -> None:
    base = _tiny_food101(tmp_path)
    (base / "meta" / "train.txt").unlink()
    with pytest.raises(DataError, match=str(base / "meta" / "train.txt")):
        load_index(tmp_path)
    (base / "meta" / "classes.txt").unlink()
    with pytest.raises(DataError, match=f"missing meta file {base / 'meta' / 'classes.txt'}"):
        load_index(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no dataset in .*empty: expected Food-101"):
        load_index(empty)


def test_unknown_class_and_missing_image_name_path(tmp_path: Path) -> None:
    base = _tiny_food101(tmp_path)
    train_txt = base / "meta" / "train.txt"
    original = train_txt.read_text()
    train_txt.write_text(original + "pizza/7\n")
    with pytest.raises(DataError, match="'pizza' is not in .*classes.txt") as err:
        load_index(base)
    assert str(train_txt) in str(err.value) and "\n" not in str(err.value)
    train_txt.write_text(original)
    missing = base / "images" / "hot_dog" / "2.jpg"
    missing.unlink()
    with pytest.raises(DataError, match=f"image {missing} listed in {train_txt}"):
        load_index(base)
    assert len(load_index(base, check_files=False).samples("all")) == 10  # listed, not checked


def test_parquet_index(tmp_path: Path) -> None:
    base = tmp_path / "processed"
    for split, n in (("train", 6), ("val", 2)):
        for i in range(n):
            _write_jpeg(base / "images" / split / f"{i}.jpg")
    # path relative to images/ with string labels; val relative to the parquet folder with "path"/"class"
    pq.write_table(pa.table({"image_path": [f"train/{i}.jpg" for i in range(6)],
                             "label": ["sushi", "ramen"] * 3, "extra": list(range(6))}), base / "train.parquet")
    pq.write_table(pa.table({"path": ["images/val/0.jpg", "images/val/1.jpg"], "class": ["ramen", "sushi"]}),
                   base / "val.parquet")
    for root in (base, tmp_path):
        if root == tmp_path:
            shutil.move(base, tmp_path / "food-101")
            base = tmp_path / "food-101"
        index = load_index(root)
        assert index.classes == ["ramen", "sushi"] and index.labels == ["Ramen", "Sushi"]
        assert len(index.samples("train")) == 6 and len(index.samples("val")) == 2  # val.parquet, not carved
        assert index.samples("val")[0] == FoodSample(base / "images" / "val" / "0.jpg", 0)
        assert Counter(s.label for s in index.samples("train")) == {0: 3, 1: 3}
        with pytest.raises(DataError, match="no test split"):
            index.samples("test")
    pq.write_table(pa.table({"file": ["x.jpg"], "label": [0]}), base / "train.parquet")
    with pytest.raises(DataError, match=r"train.parquet has no image path column: expected one of image_path"):
        load_index(base)


def test_parquet_integer_labels_carve_val(tmp_path: Path) -> None:
    for i in range(6):
        _write_jpeg(tmp_path / "images" / f"{i}.jpg")
    pq.write_table(pa.table({"path": [f"{i}.jpg" for i in range(6)], "label": [0, 1, 2] * 2}),
                   tmp_path / "train.parquet")
    index = load_index(tmp_path, val_fraction=0.5)
    assert index.classes == ["0", "1", "2"]
    assert sorted(s.label for s in index.samples("val")) == [0, 1, 2]
    pq.write_table(pa.table({"path": ["missing.jpg"], "label": [0]}), tmp_path / "train.parquet")
    with pytest.raises(DataError, match=f"image {tmp_path / 'missing.jpg'} or .*missing"):
        load_index(tmp_path)


# ---------------------------------------------------------------------------------------- transforms


def test_transform_shapes_values_and_determinism() -> None:
    from torchvision import tv_tensors

    image = tv_tensors.Image(torch.full((3, 50, 70), 128, dtype=torch.uint8))
    out = eval_transform(32)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[:, 16, 16], expected, atol=1e-5, rtol=0)
    torch.manual_seed(0)
    rand = tv_tensors.Image(torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8))
    aug = train_transform(48)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)  # randomness comes only from the global torch RNG
        outs.append(aug(rand))
    assert outs[0].shape == (3, 48, 48) and outs[0].dtype == torch.float32
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(124)
    assert not torch.equal(aug(rand), outs[0])


# ---------------------------------------------------------------------------------------- bad images


def test_corrupt_jpeg_raises_or_is_skipped(tmp_path: Path) -> None:
    good = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, p in enumerate(good):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[: good[0].stat().st_size // 2])  # header ok, data cut
    header_cut = tmp_path / "header.jpg"
    header_cut.write_bytes(good[0].read_bytes()[:20])
    samples = [FoodSample(good[0], 0), FoodSample(truncated, 1), FoodSample(good[1], 2),
               FoodSample(header_cut, 0), FoodSample(good[2], 1)]
    with pytest.raises(DataError, match=f"cannot read image {truncated}"):
        FoodDataset(samples, eval_transform(16))[1]
    ds = FoodDataset(samples, eval_transform(16), skip_bad_images=True)
    item = ds[1]
    assert item["index"] == 2 and item["label"].item() == 2  # the next sample replaces it
    assert ds[3]["index"] == 4
    ds[1]
    assert ds.bad_samples.paths() == sorted(str(p) for p in (truncated, header_cut))  # recorded once each
    assert check_images(samples) == [header_cut]
    assert check_images(samples, full_decode=True) == [truncated, header_cut]
    all_bad = FoodDataset([FoodSample(header_cut, 0)], None, skip_bad_images=True)
    with pytest.raises(DataError, match="no readable image"):
        all_bad[0]

    # loader workers each hold a copy of the dataset: the count still reaches the main process
    from mlcore.data import make_loader

    workers = FoodDataset(samples, eval_transform(16), skip_bad_images=True)
    batches = list(make_loader(workers, batch_size=2, shuffle=True, num_workers=2))
    assert sum(len(b["index"]) for b in batches) == len(samples)
    assert workers.bad_samples.paths() == sorted(str(p) for p in (truncated, header_cut))


def test_mlcore_loader_batches_reproducible(food_root: Path) -> None:
    from mlcore.data import make_loader

    samples = load_index(food_root).samples("train")[:4]
    batches = []
    for _ in range(2):
        loader = make_loader(FoodDataset(samples, train_transform(32)), batch_size=4, shuffle=True, seed=5)
        batches.append(next(iter(loader)))
    assert batches[0]["image"].shape == (4, 3, 32, 32) and batches[0]["label"].dtype == torch.int64
    assert torch.equal(batches[0]["image"], batches[1]["image"])  # augmentation re-seeded per sample
    assert torch.equal(batches[0]["index"], batches[1]["index"])


# ------------------------------------------------------------------------------- seed 002's augmentations


def test_seed_augmentation_parameters() -> None:
    from foodrec.data import CoarseDropout, GaussianBlur, GaussNoise, RandomBrightnessContrast

    torch.manual_seed(0)
    grey = torch.full((3, 60, 60), 0.5)
    # CoarseDropout: exactly 8 holes of 30 px (albumentations 1.x: min_holes/min_height default to the maxima)
    out = CoarseDropout(8, 30, p=1.0)(grey)
    zero = out[0] == 0
    assert zero.any() and zero.sum() <= 8 * 30 * 30 and torch.equal(out[0], out[1])
    rows, cols = zero.any(1).nonzero(), zero.any(0).nonzero()
    assert rows.max() - rows.min() + 1 >= 30 and cols.max() - cols.min() + 1 >= 30
    single = CoarseDropout(1, 30, p=1.0)(torch.ones(3, 100, 100))
    assert int((single[0] == 0).sum()) == 900
    assert int((CoarseDropout(8, 30, p=1.0)(torch.ones(3, 300, 300))[0] == 0).sum()) <= 8 * 900
    # GaussNoise: variance 10-50 on the 0-255 scale
    stds = [float((GaussNoise((10.0, 50.0), p=1.0)(grey) - grey).std() * 255) for _ in range(20)]
    assert all(np.sqrt(10) * 0.9 < s < np.sqrt(50) * 1.1 for s in stds) and max(stds) - min(stds) > 0.5
    # GaussianBlur: kernel 3 or 5 with OpenCV's sigma for sigma 0 (0.8 / 1.1)
    impulse = torch.zeros(1, 11, 11)
    impulse[0, 5, 5] = 1
    widths = set()
    for _ in range(20):
        blurred = GaussianBlur((3, 5), p=1.0)(impulse)
        widths.add(int((blurred[0, 5] > 0).sum()))
    assert widths == {3, 5}
    # RandomBrightnessContrast: x * alpha + beta with alpha in [0.8, 1.2], beta in [-0.2, 0.2]
    for _ in range(20):
        v = float(RandomBrightnessContrast(0.2, 0.2, p=1.0)(grey)[0, 0, 0])
        assert 0.5 * 0.8 - 0.2 - 1e-6 <= v <= 0.5 * 1.2 + 0.2 + 1e-6
    assert torch.equal(RandomBrightnessContrast(p=0.0)(grey), grey)

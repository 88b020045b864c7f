from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlcore.data import IMAGENET_MEAN, IMAGENET_STD, BadSampleLog, stratified_split
from mlcore.vision import DataError, load_image, load_index
from mlcore.vision import ImageDataset as PlantDataset
from mlcore.vision import Sample as PlantSample
from mlcore.vision import eval_transform as _eval_transform
from mlcore.vision.preprocess import DEFAULT_DATA_CONFIG
from plantid.data import decode_transform, train_transform


def eval_transform(size: int):
    return _eval_transform({**DEFAULT_DATA_CONFIG, "input_size": (3, size, size)})


def _samples(counts):
    return [PlantSample(Path(f"c{c}/{i}.jpg"), c) for c, n in enumerate(counts) for i in range(n)]


def test_stratified_split_counts_seed_and_disjointness():
    samples = _samples([10, 7, 1, 2])
    train, val = stratified_split(samples, 0.2, seed=3)
    per_class = Counter(s.label for s in val)
    assert per_class == {0: 2, 1: 1, 3: 1}  # round(0.2 n) clamped to [1, n-1]; the 1-sample class stays in train
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(samples)
    assert stratified_split(samples, 0.2, seed=3) == (train, val)
    assert stratified_split(samples, 0.2, seed=4)[1] != val
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(samples, 1.0)


def test_flowers_imagefolder_index(flowers_root):
    index = load_index(flowers_root, val_fraction=0.2, seed=0)
    assert index.layout == "imagefolder"
    assert index.classes == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    n_per_class = {c: len(list((flowers_root / c).glob("*.jpg"))) for c in index.classes}
    val = Counter(index.classes[s.label] for s in index.samples("val"))
    assert val == {c: round(0.2 * n) for c, n in n_per_class.items()}
    assert len(index.samples("train")) + len(index.samples("val")) == sum(n_per_class.values())
    with pytest.raises(DataError, match="no test split"):
        index.samples("test")


def _jpeg(path: Path, colour=(10, 200, 30), size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_plantnet300k_layout(tmp_path):
    base = tmp_path / "plantnet_300K"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for sp in ("1355868", "1355920"):
            for i in range(n):
                _jpeg(base / "images" / split / sp / f"{split}{i}.jpg")
    (base / "plantnet300K_species_id_2_name.json").write_text(
        json.dumps({"1355868": "Lactuca virosa L.", "1355920": "Capsella bursa-pastoris (L.) Medik."}))
    index = load_index(tmp_path)  # the folder that contains plantnet_300K/
    assert index.layout == "plantnet300k" and index.root == base
    assert index.classes == ["1355868", "1355920"]
    assert index.labels == ["Lactuca virosa L.", "Capsella bursa-pastoris (L.) Medik."]
    assert [len(index.samples(s)) for s in ("train", "val", "test", "all")] == [6, 2, 4, 12]
    # a species in val that train does not have is an error naming the folder
    _jpeg(base / "images" / "val" / "999" / "x.jpg")
    with pytest.raises(DataError, match="999"):
        load_index(base)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_index(tmp_path / "nope")
    (tmp_path / "only").mkdir()
    _jpeg(tmp_path / "only" / "a.jpg")
    with pytest.raises(DataError, match="ImageFolder"):
        load_index(tmp_path)


def test_transforms_dtypes_and_normalisation():
    img = load_image_from_array(np.full((30, 40, 3), 128, np.uint8))
    raw = decode_transform(28)(img)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 28, 28)
    ev = eval_transform(28)(img).as_subclass(torch.Tensor)
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(ev[:, 5, 5], expected, atol=1e-5, rtol=0)
    tr = train_transform(28)(img).as_subclass(torch.Tensor)
    assert tr.dtype == torch.float32 and tr.shape == (3, 28, 28)


def load_image_from_array(a):
    from torchvision import tv_tensors

    return tv_tensors.Image(torch.from_numpy(a).permute(2, 0, 1).contiguous())


def test_bad_image_raises_or_is_skipped_and_counted(tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    _jpeg(good)
    bad.write_bytes(b"not a jpeg")
    samples = [PlantSample(bad, 0), PlantSample(good, 1)]
    with pytest.raises(DataError, match="bad.jpg"):
        PlantDataset(samples, decode_transform(8))[0]
    log = BadSampleLog(tmp_path / "bad_log")
    ds = PlantDataset(samples, decode_transform(8), bad_samples=log)
    item = ds[0]
    assert item["label"].item() == 1 and item["index"] == 1  # the next readable sample
    assert log.paths() == [str(bad)]
    with pytest.raises(DataError, match="no readable image"):
        PlantDataset([PlantSample(bad, 0)], decode_transform(8), bad_samples=log)[0]
    assert load_image(good).shape == (3, 16, 20)

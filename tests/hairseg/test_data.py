"""Tests for hairseg.data: layouts, seeded splits, the mmap cache, joint augmentation, pair errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hairseg import data
from hairseg.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    HairSample,
    HairSegDataset,
    build_cache,
    check_pair,
    find_samples,
    letterbox,
    letterbox_shape,
    load_image,
    load_mask,
    preprocess_image,
)


# --------------------------------------------------------------------------------------------- fixtures
def _photo(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _hair(w: int, h: int) -> np.ndarray:
    """An asymmetric blob in the upper left: (h, w) uint8 {0, 1}."""
    yy, xx = np.mgrid[:h, :w]
    return ((xx < w * 0.4) & (yy < h * 0.6) & (xx + yy > h * 0.15)).astype(np.uint8)


def make_folder(root: Path, sizes: list[tuple[int, int]]) -> Path:
    """images/NAME.jpg + masks/NAME.png (0/255) with the given (w, h) sizes."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(_photo(w, h, i)).save(root / "images" / f"p{i:03d}.jpg", quality=90)
        Image.fromarray(_hair(w, h) * 255).save(root / "masks" / f"p{i:03d}.png")
    return root


def make_figaro(root: Path, n_train: int, n_test: int = 0) -> Path:
    """Figaro1k/Original/{Training,Testing}/FrameNNNNN-org.jpg + GT/.../FrameNNNNN-gt.pbm (mode 1)."""
    base = root / "Figaro1k"
    for split, n, start in (("Training", n_train, 1), ("Testing", n_test, 1 + n_train)):
        if n == 0:
            continue
        (base / "Original" / split).mkdir(parents=True)
        (base / "GT" / split).mkdir(parents=True)
        for k in range(start, start + n):
            w, h = 40 + k % 7, 30 + k % 5
            Image.fromarray(_photo(w, h, k)).save(base / "Original" / split / f"Frame{k:05d}-org.jpg")
            Image.fromarray(_hair(w, h) * 255).convert("1").save(base / "GT" / split / f"Frame{k:05d}-gt.pbm")
    return root


def _names(samples: list[HairSample]) -> list[str]:
    return [s.name for s in samples]


# ------------------------------------------------------------------------------------ real sample data
def test_figaro_real_layout_and_split(figaro_root: Path) -> None:
    everything = find_samples(figaro_root, "all")
    assert len(everything) == 840
    assert everything[0].image.name == "Frame00001-org.jpg" and everything[0].mask.name == "Frame00001-gt.pbm"
    # The sample has no Testing folder: test (reported only) and val (selection) are both carved from
    # Training by the seed, three disjoint splits (issue 17: figures from data never used to choose them).
    train, val, test = (find_samples(figaro_root, s) for s in ("train", "val", "test"))
    assert len(val) == len(test) == round(0.15 * 840) and len(train) == 840 - 2 * len(val)
    names = [set(_names(p)) for p in (train, val, test)]
    assert names[0].isdisjoint(names[1]) and names[0].isdisjoint(names[2]) and names[1].isdisjoint(names[2])
    assert sorted(_names(train) + _names(val) + _names(test)) == _names(everything)
    # --data may point at the dataset's own root (Figaro1k/) or at the folder that contains it.
    assert find_samples(figaro_root / "Figaro1k", "val") == val
    assert find_samples(figaro_root, "test", seed=1) != test


def test_lfw_real_layout_and_split(lfw_hair_root: Path) -> None:
    everything = find_samples(lfw_hair_root, "all")
    assert len(everything) == 500
    assert all(
        s.image.suffix == ".jpg" and s.mask == lfw_hair_root / "masks" / f"{s.name}.png" for s in everything
    )
    parts = {split: find_samples(lfw_hair_root, split) for split in ("train", "val", "test")}
    assert {k: len(v) for k, v in parts.items()} == {"train": 350, "val": 75, "test": 75}
    names = [set(_names(v)) for v in parts.values()]
    assert names[0].isdisjoint(names[1]) and names[0].isdisjoint(names[2]) and names[1].isdisjoint(names[2])
    assert set().union(*names) == set(_names(everything))


def test_real_masks_are_binary(figaro_root: Path, lfw_hair_root: Path) -> None:
    for root in (figaro_root, lfw_hair_root):
        for sample in find_samples(root, "all")[:4]:
            mask, image = load_mask(sample.mask), load_image(sample.image)
            assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}, sample.mask
            assert image.dtype == np.uint8 and image.shape == (*mask.shape, 3)


def test_real_cached_epoch_equals_decoded(figaro_root: Path, tmp_path: Path) -> None:
    samples = find_samples(figaro_root, "all")[:16]
    cached = HairSegDataset(samples, image_size=96, cache_dir=tmp_path)
    decoded = HairSegDataset(samples, image_size=96, cache_dir=tmp_path / "unused", use_cache=False)
    assert sorted(p.name.split("_")[-1] for p in tmp_path.glob("*.npy")) == ["images.npy", "masks.npy"]
    assert not (tmp_path / "unused").exists()
    for i in range(len(samples)):
        (ci, cm), (di, dm) = cached.load_uint8(i), decoded.load_uint8(i)
        assert ci.shape == (96, 96, 3) and cm.shape == (96, 96) and ci.dtype == cm.dtype == np.uint8
        np.testing.assert_array_equal(ci, di)
        np.testing.assert_array_equal(cm, dm)
        a, b = cached[i], decoded[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]) and a["index"] == i


# -------------------------------------------------------------------------------- discovery and splits
def test_generated_figaro_with_testing_and_both_levels(tmp_path: Path) -> None:
    root = make_figaro(tmp_path / "figaro1k", n_train=20, n_test=6)
    test = find_samples(root, "test")
    assert _names(test) == [f"Frame{k:05d}" for k in range(21, 27)]
    assert len(find_samples(root, "val", val_fraction=0.25)) == 5
    assert len(find_samples(root, "all")) == 26
    assert find_samples(root / "Figaro1k", "train") == find_samples(root, "train")


def test_folder_layout_at_either_level(tmp_path: Path) -> None:
    make_folder(tmp_path / "download" / "lfw_hair", [(20, 16)] * 5)
    assert find_samples(tmp_path / "download", "all") == find_samples(
        tmp_path / "download" / "lfw_hair", "all"
    )


def test_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", [(12, 10)] * 40)

    def split(seed: int) -> dict[str, list[str]]:
        return {
            s: _names(find_samples(root, s, val_fraction=0.2, test_fraction=0.1, seed=seed))
            for s in ("train", "val", "test")
        }

    first = split(0)
    assert split(0) == first
    assert split(1) != first
    assert {k: len(v) for k, v in first.items()} == {"train": 28, "val": 8, "test": 4}
    assert sorted(sum(first.values(), [])) == [f"p{i:03d}" for i in range(40)]  # no overlap, nothing lost


def test_unknown_layout_and_bad_fractions(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=rf"no hair dataset in {tmp_path}"):
        find_samples(tmp_path, "all")
    with pytest.raises(DataError, match="does not exist"):
        find_samples(tmp_path / "nope", "all")
    make_folder(tmp_path / "a" / "x", [(8, 8)] * 3)
    with pytest.raises(DataError, match="must be in"):
        find_samples(tmp_path / "a", "train", val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(DataError, match="split must be train, val, test or all, got 'dev'"):
        find_samples(tmp_path / "a", "dev")


def test_data_error_is_the_one_mlcore_and_the_classifiers_raise() -> None:
    import mlcore.data
    import mlcore.vision

    # one class: a CLI (or a caller) that catches mlcore's DataError catches hairseg's data errors too
    assert DataError is mlcore.data.DataError is mlcore.vision.DataError


# ------------------------------------------------------------------------------------------ pair errors
def test_missing_mask_names_both_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", [(12, 10)] * 3)
    (root / "masks" / "p001.png").unlink()
    with pytest.raises(DataError) as err:
        find_samples(root, "all")
    assert str(root / "images" / "p001.jpg") in str(err.value) and str(root / "masks" / "p001.png") in str(
        err.value
    )
    figaro = make_figaro(tmp_path / "f", n_train=3)
    gt = figaro / "Figaro1k" / "GT" / "Training" / "Frame00002-gt.pbm"
    gt.unlink()
    with pytest.raises(DataError, match=rf"mask {gt} for image .*Frame00002-org\.jpg is missing"):
        find_samples(figaro, "all")


def test_wrong_size_mask_names_both_files(tmp_path: Path) -> None:
    root = make_figaro(tmp_path, n_train=3)
    gt = root / "Figaro1k" / "GT" / "Training" / "Frame00001-gt.pbm"
    Image.fromarray(np.ones((20, 30), np.uint8) * 255).convert("1").save(gt)
    image = root / "Figaro1k" / "Original" / "Training" / "Frame00001-org.jpg"
    with Image.open(image) as im:
        w, h = im.size
    with pytest.raises(DataError, match=rf"^mask {gt} is 30x20 but image {image} is {w}x{h}$"):
        find_samples(root, "train", val_fraction=0.0)


@pytest.mark.parametrize("broken", ["image", "mask"])
def test_unreadable_file_names_both_files(tmp_path: Path, broken: str) -> None:
    root = make_folder(tmp_path / "d", [(12, 10)] * 2)
    pair = HairSample(root / "images" / "p000.jpg", root / "masks" / "p000.png", "p000")
    getattr(pair, broken).write_bytes(b"not an image at all")
    with pytest.raises(DataError) as err:
        find_samples(root, "all")
    assert f"cannot read {broken}" in str(err.value)
    assert str(pair.image) in str(err.value) and str(pair.mask) in str(err.value)


def test_decode_mismatch_is_caught_when_building_cache(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", [(12, 10), (14, 9)])
    bad = HairSample(root / "images" / "p000.jpg", root / "masks" / "p001.png", "p000")  # skips find_samples
    with pytest.raises(DataError, match=r"mask .*p001\.png is 14x9 but image .*p000\.jpg is 12x10"):
        build_cache([bad], 8, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no partial or temporary files left behind


# ------------------------------------------------------------------------------------------------- masks
def test_load_mask_binarisation(tmp_path: Path) -> None:
    grey = np.array([[0, 1, 127, 128, 255]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "grey.png"), [[0, 0, 0, 1, 1]])
    Image.fromarray(np.array([[0, 1, 1, 0]], np.uint8)).save(tmp_path / "index.png")  # 0/1 class indices
    np.testing.assert_array_equal(load_mask(tmp_path / "index.png"), [[0, 1, 1, 0]])
    Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1").save(tmp_path / "m.pbm")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.pbm"), [[0, 1, 0]])


# ------------------------------------------------------------------------------------------------- cache
def test_cache_is_reused_and_invalidated_by_stamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "d", [(30, 20), (17, 25), (40, 40)])
    samples = find_samples(root, "all")
    cache = tmp_path / "cache"
    images, masks = build_cache(samples, 16, cache)
    assert isinstance(images, np.memmap) and images.shape == (3, 16, 16, 3) and masks.shape == (3, 16, 16)
    first = np.array(images)

    def no_decoding(path: object) -> np.ndarray:
        raise AssertionError(f"decoded {path} although the cache is valid")

    monkeypatch.setattr(data, "load_image", no_decoding)
    again, _ = build_cache(samples, 16, cache)  # same sources, same stamps: no decoding
    np.testing.assert_array_equal(again, first)
    assert len(list(cache.glob("*.npy"))) == 2

    Image.fromarray(np.full((25, 17, 3), 200, np.uint8)).save(samples[1].image)
    st = samples[1].image.stat()
    os.utime(samples[1].image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(AssertionError, match="decoded"):
        build_cache(samples, 16, cache)
    monkeypatch.undo()
    rebuilt, _ = build_cache(samples, 16, cache)
    np.testing.assert_array_equal(rebuilt[[0, 2]], first[[0, 2]])
    h, w = letterbox_shape(25, 17, 16)  # aspect ratio kept: 16 x 11, padded with black (was squashed)
    assert (h, w) == (16, 11)
    assert np.abs(rebuilt[1][:h, :w].astype(int) - 200).max() <= 2  # JPEG of a flat grey image
    assert (rebuilt[1][:, w:] == 0).all()
    assert not list(cache.glob("*.tmp.npy"))


def test_dataset_pickles_without_the_arrays(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", [(64, 48)] * 4)
    ds = HairSegDataset(find_samples(root, "all"), image_size=64, cache_dir=tmp_path / "cache")
    blob = pickle.dumps(ds)
    assert len(blob) < 4 * 64 * 64 * 3  # the memmap is re-opened in the worker, not copied
    clone = pickle.loads(blob)
    assert torch.equal(clone[2]["image"], ds[2]["image"]) and torch.equal(clone[2]["mask"], ds[2]["mask"])


# -------------------------------------------------------------------------------- transforms / dataset
def test_eval_item_matches_preprocess_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", [(50, 37), (33, 61)])
    samples = find_samples(root, "all")
    ds = HairSegDataset(samples, image_size=32, cache_dir=tmp_path / "cache")
    for i, sample in enumerate(samples):
        item = ds[i]
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(item["image"], preprocess_image(load_image(sample.image), 32)[0])
    raw, _ = ds.load_uint8(0)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (torch.from_numpy(raw).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(ds[0]["image"], expected)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        preprocess_image(np.zeros((8, 8), np.uint8), 16)


def test_augmentation_keeps_image_and_mask_aligned(tmp_path: Path) -> None:
    # The image's brightness encodes the mask (white blob on black), so any geometric transform applied
    # to only one of the two shows up as disagreement between the thresholded image and the mask.
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    hair = _hair(64, 64)
    Image.fromarray(np.repeat(hair[..., None] * 255, 3, axis=2)).save(tmp_path / "d" / "images" / "a.png")
    Image.fromarray(hair * 255).save(tmp_path / "d" / "masks" / "a.png")
    ds = HairSegDataset(
        find_samples(tmp_path / "d", "all"), image_size=64, train=True, cache_dir=tmp_path / "c"
    )
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    original = torch.from_numpy(hair).bool()
    flipped = rotated = 0
    for seed in range(40):
        torch.manual_seed(seed)
        item = ds[0]
        mask = item["mask"][0]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        bright = (item["image"] * std + mean).mean(0) > 0.5
        agreement = (bright == mask.bool()).float().mean().item()
        assert agreement > 0.97, f"seed {seed}: image and mask disagree on {1 - agreement:.1%} of pixels"
        flipped += bool(mask[:, 40:].sum() > mask[:, :24].sum())
        rotated += not (torch.equal(mask.bool(), original) or torch.equal(mask.bool(), original.flip(-1)))
    assert flipped >= 5 and rotated >= 3  # the draws did exercise flips and rotations


def test_augmentation_draws_only_from_global_rng(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", [(40, 30)] * 2)
    samples = find_samples(root, "all")
    one = HairSegDataset(samples, image_size=32, train=True, cache_dir=tmp_path / "c")
    torch.manual_seed(123)  # consuming global randomness between the two datasets' creation must not matter
    two = HairSegDataset(samples, image_size=32, train=True, cache_dir=tmp_path / "c")
    outputs = []
    for seed in range(8):
        torch.manual_seed(seed)
        a = one[1]
        torch.manual_seed(seed)
        b = two[1]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        outputs.append(a["image"])
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])


def test_letterbox_keeps_the_aspect_ratio_and_pads_bottom_right() -> None:
    image = np.full((30, 60, 3), 120, np.uint8)
    boxed = letterbox(image, 32)
    assert boxed.shape == (32, 32, 3) and letterbox_shape(30, 60, 32) == (16, 32)
    assert (boxed[:16] == 120).all() and (boxed[16:] == 0).all()
    assert letterbox_shape(512, 385, 384) == (384, 289)
    mask = letterbox(np.ones((60, 30), np.uint8), 32, resample=Image.Resampling.NEAREST)
    assert mask.shape == (32, 32) and mask[:, :16].all() and not mask[:, 16:].any()


def test_exif_orientation_is_applied_on_load(tmp_path: Path) -> None:
    """A photo stored sideways (80 wide x 40 high) with EXIF orientation 6 loads upright at 40 x 80."""
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :10] = 255  # white band on the stored left edge -> the top after rotating 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "side.jpg", exif=exif.tobytes(), quality=95)
    upright = load_image(tmp_path / "side.jpg")
    assert upright.shape == (80, 40, 3)
    assert upright[:8].mean() > 200 and upright[12:].mean() < 30
    mask = np.zeros((80, 40), np.uint8)
    Image.fromarray(mask).save(tmp_path / "side.png")
    check_pair(HairSample(tmp_path / "side.jpg", tmp_path / "side.png", "side"))  # displayed sizes agree

"""hairseg.recolor: palette, mask post-processing (feather, anti-bleed) and luminance-preserving recolour."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from PIL import Image

from hairseg.recolor import HAIR_COLORS, lightness_shift_fraction, postprocess_mask, recolor_hair

MID_COLORS = ("brown", "auburn", "red", "copper", "pink", "blue")  # target L* within 30..70


def _lab(rgb_u8: np.ndarray) -> np.ndarray:
    flat = rgb_u8.reshape(-1, 1, 3).astype(np.float32) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(*rgb_u8.shape[:-1], 3)


def _hair_photo(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(48, 64, 3) uint8 'photo': grey-blue background, a brown strand-textured hair block
    (L* about 25-55) in the middle; and its (48, 64) bool hair mask."""
    rng = np.random.default_rng(seed)
    image = np.empty((48, 64, 3), dtype=np.uint8)
    image[:] = (120, 130, 150)
    strands = 0.45 + 0.55 * rng.random(64)[None, :] * np.linspace(0.7, 1.0, 32)[:, None]  # (32, 64)
    base = np.array([150, 100, 60], dtype=np.float64)
    image[8:40] = np.clip(base[None, None, :] * strands[..., None] * 1.2, 0, 255).astype(np.uint8)
    mask = np.zeros((48, 64), dtype=bool)
    mask[8:40] = True
    return image, mask


def test_palette_has_exactly_the_ten_colours():
    assert list(HAIR_COLORS) == [
        "black",
        "dark_brown",
        "brown",
        "auburn",
        "red",
        "copper",
        "blonde",
        "platinum",
        "pink",
        "blue",
    ]
    for rgb in HAIR_COLORS.values():
        assert len(rgb) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)
    assert len(set(HAIR_COLORS.values())) == 10


def test_unknown_colour_lists_valid_names():
    image, mask = _hair_photo()
    with pytest.raises(ValueError, match="valid names: black, dark_brown, .*blue"):
        recolor_hair(image, mask.astype(np.uint8) * 255, "green")
    with pytest.raises(ValueError, match="R, G, B"):
        recolor_hair(image, mask.astype(np.uint8) * 255, (300, 0, 0))
    with pytest.raises(ValueError, match="mask"):
        recolor_hair(image, mask, "red")  # bool, not uint8 alpha


@pytest.mark.parametrize("color", list(HAIR_COLORS))
def test_pixels_outside_the_mask_are_bit_identical_and_output_is_deterministic(color):
    image, mask = _hair_photo()
    alpha = postprocess_mask(mask.astype(np.float32), mask.shape)
    out = recolor_hair(image, alpha, color)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[alpha == 0], image[alpha == 0])
    assert not np.array_equal(out[alpha == 255], image[alpha == 255])
    assert np.array_equal(recolor_hair(image.copy(), alpha.copy(), color), out)
    assert np.array_equal(recolor_hair(image, alpha, color, strength=0.0), image)


@pytest.mark.parametrize("color", MID_COLORS)
def test_mid_colours_keep_lightness_and_take_the_target_hue(color):
    image, mask = _hair_photo()
    out = recolor_hair(image, mask.astype(np.uint8) * 255, color)
    before, after = _lab(image[mask]), _lab(out[mask])
    # Mid colours do not shift L*; what remains is uint8 rounding (< 0.5 L*) and sRGB gamut clipping
    # of saturated targets on light strands. 1.5 L* is well under a just-noticeable lightness step (~2).
    assert np.abs(after[:, 0] - before[:, 0]).mean() < 1.5
    target = _lab(np.array(HAIR_COLORS[color], dtype=np.uint8))
    hue = math.degrees(math.atan2(after[:, 2].mean(), after[:, 1].mean()))
    target_hue = math.degrees(math.atan2(target[2], target[1]))
    assert abs((hue - target_hue + 180) % 360 - 180) < 5.0
    # The original brown hue is gone for red and blue (sanity of the hue check itself).
    if color in ("red", "blue"):
        orig_hue = math.degrees(math.atan2(before[:, 2].mean(), before[:, 1].mean()))
        assert abs((orig_hue - target_hue + 180) % 360 - 180) > 15.0


def test_extreme_targets_shift_lightness_partially_and_keep_strand_variation():
    image, mask = _hair_photo()
    alpha = mask.astype(np.uint8) * 255
    l_before = _lab(image[mask])[:, 0]
    for color, direction in (("platinum", 1), ("black", -1)):
        l_after = _lab(recolor_hair(image, alpha, color)[mask])[:, 0]
        target_l = float(_lab(np.array(HAIR_COLORS[color], dtype=np.uint8))[0])
        k = lightness_shift_fraction(target_l)
        assert 0.3 < k < 0.7
        expected_shift = k * (target_l - l_before.mean())
        assert direction * expected_shift > 5
        assert (l_after - l_before).mean() == pytest.approx(expected_shift, abs=1.5)
        # Strands stay distinguishable: the lightness pattern is kept (correlation with the original).
        assert np.corrcoef(l_before, l_after)[0, 1] > 0.95
    assert lightness_shift_fraction(50.0) == 0.0 and lightness_shift_fraction(30.0) == 0.0


def test_recolor_on_a_real_photo(figaro_root):
    name = "Frame00001"
    image = np.asarray(Image.open(figaro_root / f"Figaro1k/Original/Training/{name}-org.jpg").convert("RGB"))
    hair = np.asarray(Image.open(figaro_root / f"Figaro1k/GT/Training/{name}-gt.pbm")).astype(bool)
    assert hair.shape == image.shape[:2] and 0.05 < hair.mean() < 0.95
    alpha = postprocess_mask(hair.astype(np.float32), hair.shape)
    out = recolor_hair(image, alpha, "copper")
    assert np.array_equal(out[alpha == 0], image[alpha == 0])
    full = alpha == 255
    assert np.abs(_lab(out[full])[:, 0] - _lab(image[full])[:, 0]).mean() < 1.5


def test_postprocess_mask_resize_feather_and_guard_band():
    prob = np.zeros((32, 32), dtype=np.float32)
    prob[8:24, 6:20] = 1.0
    out_size = (96, 80)  # (H, W): a photo 3x taller, 2.5x wider
    feather, guard = 2.0, 2
    alpha = postprocess_mask(prob, out_size, feather_px=feather, guard_px=guard)
    assert alpha.shape == out_size and alpha.dtype == np.uint8

    resized = cv2.resize(prob, (out_size[1], out_size[0]), interpolation=cv2.INTER_LINEAR)
    binary = (resized >= 0.5).astype(np.uint8)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * guard + 1, 2 * guard + 1))
    guard_band = cv2.dilate(binary, disk)
    assert (alpha[guard_band == 0] == 0).all()  # anti-bleed: nothing beyond the guard band
    assert (alpha[(guard_band == 1) & (binary == 0)] > 0).any()  # the feather does reach into the band
    r = math.ceil(3 * feather)
    core = cv2.erode(binary, np.ones((2 * r + 1, 2 * r + 1), np.uint8))
    assert core.sum() > 0 and (alpha[core == 1] == 255).all()
    edge = (binary == 1) & (core == 0)
    assert (alpha[edge] < 255).any()  # feathered edge, not a hard cut

    hard = postprocess_mask(prob, out_size, feather_px=0, guard_px=0)
    assert np.array_equal(hard, binary * 255)


def test_postprocess_mask_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        postprocess_mask(np.full((4, 4), 1.5, dtype=np.float32), (8, 8))
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        postprocess_mask(np.zeros((4, 4, 1), dtype=np.float32), (8, 8))
    with pytest.raises(ValueError, match="out_size"):
        postprocess_mask(np.zeros((4, 4), dtype=np.float32), (0, 8))

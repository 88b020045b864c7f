"""Mask post-processing (resize, threshold, feathering, anti-bleed) and deterministic hair recolouring.

The plan's deferred items F04.6-F04.8: "deterministic recolor, anti-bleed", the 10-colour palette
("Palette source-of-truth aligned (10 colors)") and post-processing with "blur radius, edge
feathering". Colour maths is in CIELAB (D65, OpenCV's float conversion: L* in [0, 100]).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

HAIR_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (28, 24, 23),
    "dark_brown": (59, 40, 30),
    "brown": (106, 72, 48),
    "auburn": (145, 62, 38),
    "red": (178, 34, 34),
    "copper": (184, 100, 50),
    "blonde": (222, 188, 128),
    "platinum": (229, 226, 214),
    "pink": (231, 98, 158),
    "blue": (38, 78, 190),
}
"""The one palette: name -> sRGB uint8 ``(R, G, B)``. CIELAB L* of each: black 8.6, dark_brown 18.0,
brown 33.7, auburn 37.1, red 39.1, copper 51.2, blonde 77.8, platinum 89.7, pink 59.9, blue 37.0."""

# Lightness shift towards the target: targets with L* inside 50 +/- _MID_BAND keep every pixel's
# L* (pure luminance-preserving recolour); beyond it, the hair's mean L* moves towards the
# target's L* by a fraction rising linearly to _MAX_SHIFT at L* = 0 or 100, so that black and
# platinum (and, a little, dark_brown and blonde) read as such on mid-tone hair.
_MID_BAND = 20.0
_MAX_SHIFT = 0.7


def _srgb_to_lab(rgb_u8: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 sRGB -> ``(..., 3)`` float32 CIELAB (L* 0..100, a*, b*)."""
    flat = rgb_u8.reshape(-1, 1, 3).astype(np.float32) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(rgb_u8.shape)


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """``(..., 3)`` float32 CIELAB -> ``(..., 3)`` float32 sRGB in [0, 1] (out-of-gamut clipped)."""
    flat = lab.reshape(-1, 1, 3).astype(np.float32)
    return np.clip(cv2.cvtColor(flat, cv2.COLOR_Lab2RGB), 0.0, 1.0).reshape(lab.shape)


def resolve_color(color: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """A palette name or an ``(R, G, B)`` tuple of ints in 0..255 -> the sRGB uint8 triple.

    Raises:
        ValueError: unknown name (the message lists the valid names) or a malformed tuple.
    """
    if isinstance(color, str):
        if color not in HAIR_COLORS:
            raise ValueError(f"unknown hair colour {color!r}; valid names: {', '.join(HAIR_COLORS)}")
        return HAIR_COLORS[color]
    rgb = tuple(color)
    if len(rgb) != 3 or not all(isinstance(c, int | np.integer) and 0 <= int(c) <= 255 for c in rgb):
        raise ValueError(
            f"colour: expected a palette name or an (R, G, B) tuple of ints 0..255, got {color!r}"
        )
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def lightness_shift_fraction(target_l: float) -> float:
    """Fraction (0..0.7) of the gap between the hair's mean L* and the target's L* that is closed.

    0 for targets with 30 <= L* <= 70; rises linearly to 0.7 at L* = 0 and L* = 100
    (black: 0.50, platinum: 0.46, dark_brown: 0.28, blonde: 0.18).
    """
    excess = (abs(target_l - 50.0) - _MID_BAND) / (50.0 - _MID_BAND)
    return _MAX_SHIFT * min(max(excess, 0.0), 1.0)


def postprocess_mask(
    prob: np.ndarray,
    out_size: tuple[int, int],
    *,
    threshold: float = 0.5,
    feather_px: float = 2.0,
    guard_px: int = 2,
) -> np.ndarray:
    """Turn a model's hair probability into a feathered alpha mask at the photo's size.

    Steps: bilinear resize of the probability to ``out_size``; threshold (``prob >= threshold``);
    feathered edge = Gaussian blur of the binary mask (sigma ``feather_px`` px, kernel
    ``2 * ceil(3 * sigma) + 1``, replicated border); anti-bleed: alpha is 0 outside the binary
    mask dilated by ``guard_px`` px (elliptical structuring element), so the feather never leaks
    colour further than that guard band. Pixels farther than ``ceil(3 * feather_px)`` px (square
    neighbourhood) from any background pixel are exactly 255.

    Args:
        prob: ``(h, w)`` float32 hair probability in [0, 1] (any size, e.g. the model's 256x256).
        out_size: ``(H, W)`` of the photo, px.
        threshold: probability threshold in (0, 1).
        feather_px: Gaussian sigma of the edge feather, px (0 = hard edge).
        guard_px: width of the band around the binary mask where feathered alpha may remain, px.

    Returns:
        ``(H, W)`` uint8 alpha, 0..255 (255 = fully hair).

    Raises:
        ValueError: ``prob`` is not a 2-D array with values in [0, 1]; bad size or parameters.
    """
    prob = np.asarray(prob)
    if prob.ndim != 2 or prob.size == 0 or not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(
            f"prob: expected a non-empty (h, w) float array, got shape {prob.shape} dtype {prob.dtype}"
        )
    if not np.isfinite(prob).all() or prob.min() < 0.0 or prob.max() > 1.0:
        raise ValueError(f"prob: expected values in [0, 1], got range [{prob.min()}, {prob.max()}]")
    if len(out_size) != 2 or min(int(out_size[0]), int(out_size[1])) <= 0:
        raise ValueError(f"out_size: expected (H, W) positive ints, got {out_size}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: expected a value in (0, 1), got {threshold}")
    if feather_px < 0 or guard_px < 0:
        raise ValueError(f"feather_px and guard_px must be >= 0, got {feather_px}, {guard_px}")

    height, width = int(out_size[0]), int(out_size[1])
    resized = cv2.resize(prob.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    binary = (resized >= threshold).astype(np.uint8)

    if feather_px > 0:
        ksize = 2 * math.ceil(3.0 * feather_px) + 1
        soft = cv2.GaussianBlur(
            binary.astype(np.float32),
            (ksize, ksize),
            sigmaX=feather_px,
            sigmaY=feather_px,
            borderType=cv2.BORDER_REPLICATE,
        )
    else:
        soft = binary.astype(np.float32)

    if guard_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * guard_px + 1, 2 * guard_px + 1))
        guard = cv2.dilate(binary, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    else:
        guard = binary
    alpha = np.rint(np.clip(soft, 0.0, 1.0) * 255.0) * guard
    return alpha.astype(np.uint8)


def recolor_hair(
    image: np.ndarray,
    mask: np.ndarray,
    color: str | tuple[int, int, int],
    strength: float = 1.0,
) -> np.ndarray:
    """Recolour the hair of an RGB photo, luminance-preserving, blended by the alpha mask.

    Per hair pixel (alpha > 0), in CIELAB:

    - lightness: ``L' = clip(L + k * (L_t - mean_L), 0, 100)``, where ``mean_L`` is the
      alpha-weighted mean L* of the hair and ``k = lightness_shift_fraction(L_t)``: 0 for mid
      targets (30 <= L_t <= 70: every pixel keeps its own L*), up to 0.7 for very dark / light
      targets (black, platinum), so they read while the strands' relative light/dark variation is
      kept;
    - colour: ``(a', b') = (a_t, b_t) * min(1, L' / L_t)``: the target's hue; pixels darker than the
      target get proportionally less chroma (a darker shade of the same hue, as dyed hair in shadow),
      never more chroma than the target;
    - back to sRGB (out-of-gamut values clipped), then
      ``out = image + strength * alpha / 255 * (recoloured - image)``, rounded to uint8.

    Deterministic (no randomness; the same inputs give the same bytes). Pixels with alpha 0 are
    copied bit-for-bit from ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 sRGB photo.
        mask: ``(H, W)`` uint8 alpha 0..255 (e.g. from :func:`postprocess_mask`).
        color: a :data:`HAIR_COLORS` name or an ``(R, G, B)`` tuple of ints 0..255.
        strength: blend strength in [0, 1] (0 returns a copy of ``image``).

    Returns:
        ``(H, W, 3)`` uint8 sRGB, a new array.

    Raises:
        ValueError: unknown colour name (listing the valid names), bad shapes/dtypes or strength.
    """
    target_rgb = resolve_color(color)
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if mask.shape != image.shape[:2] or mask.dtype != np.uint8:
        raise ValueError(
            f"mask: expected (H, W) uint8 alpha with (H, W) = {image.shape[:2]}, got shape {mask.shape} "
            f"dtype {mask.dtype}"
        )
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength: expected a value in [0, 1], got {strength}")

    out = image.copy()
    hair = mask > 0
    if strength == 0.0 or not hair.any():
        return out

    pixels = image[hair]  # (P, 3) uint8
    alpha = mask[hair].astype(np.float32) / 255.0  # (P,)
    lab = _srgb_to_lab(pixels)  # (P, 3)
    l_t, a_t, b_t = (float(v) for v in _srgb_to_lab(np.array(target_rgb, dtype=np.uint8)))

    mean_l = float(np.sum(alpha * lab[:, 0]) / np.sum(alpha))
    new_l = np.clip(lab[:, 0] + lightness_shift_fraction(l_t) * (l_t - mean_l), 0.0, 100.0)
    chroma_scale = np.minimum(1.0, new_l / max(l_t, 1e-3))
    new_lab = np.stack([new_l, a_t * chroma_scale, b_t * chroma_scale], axis=1).astype(np.float32)
    recoloured = _lab_to_srgb(new_lab) * 255.0  # (P, 3) float32

    weight = (strength * alpha)[:, None]
    src = pixels.astype(np.float32)
    blended = src + weight * (recoloured - src)
    out[hair] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out

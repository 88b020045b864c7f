"""Mask post-processing (soft alpha, edge-aware refinement, anti-bleed) and hair recolouring to a named shade.

The plan's deferred items F04.6-F04.8 ("deterministic recolor, anti-bleed"), the 10-colour palette
("Palette source-of-truth aligned (10 colors)") and post-processing ("blur radius, edge feathering").

- :func:`postprocess_mask`: the model's soft hair probability (not cut at 0.5) refined at the hair boundary
  by He et al.'s guided filter ("Guided Image Filtering", ECCV 2010 / TPAMI 2013; OpenCV's
  ``cv2.ximgproc.guidedFilter``) with the photo as guide, its radius proportional to the photo's size, then the
  anti-bleed guard (nothing beyond a band around the thresholded mask; inside the band, pixels whose colour is
  far from the hair's, e.g. skin, fade out).
- :func:`recolor_hair`: in CIELAB (D65, OpenCV's float conversion, L* 0..100) the hair's lightness
  distribution is moved so its mean reaches the target's L* while each pixel keeps its offset from the mean
  (strands, highlights), chroma/hue are set to the target's (LCh), and out-of-gamut colours lose chroma, not
  lightness. Blended by the soft alpha.
"""

from __future__ import annotations

import math
import re

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
"""The one palette: name -> sRGB uint8 ``(R, G, B)``. CIELAB L* / C* / h of each: black 8.7/2/39,
dark_brown 18.1/13/54, brown 33.8/23/60, auburn 37.1/46/43, red 39.1/67/34, copper 51.3/52/55,
blonde 77.9/35/83, platinum 89.8/6/100, pink 60.1/58/354, blue 37.1/69/294."""

FEATHER_FRACTION = 0.006
"""Default guided-filter radius as a fraction of the photo's long side (3 px at 512 px, 24 px at 4000 px)."""

GUARD_FRACTION = 0.01
"""Default anti-bleed guard band as a fraction of the photo's long side (6 px at 512 px, 40 px at 4000 px)."""

GUIDED_EPS = 1e-3
"""Guided-filter regularisation (guide in [0, 1]): edges with a local colour variance well above it are kept."""

# Lightness detail scale: s = clip(sqrt(L_t / mean_L), _S_MIN, _S_MAX); pixel offsets from the hair's mean L*
# are multiplied by s, so dark hair turned blonde gets somewhat stronger strands and blonde turned black
# somewhat weaker ones (as real dark/light hair), never below _S_MIN of the original.
_S_MIN, _S_MAX = 0.9, 1.5
# Softness (L* units) of the soft clip that keeps L* inside [0, 100] without flattening the darkest or
# lightest strands to one value.
_SOFT_CLIP = 3.0

_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


def _srgb_to_lab(rgb_u8: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 sRGB -> ``(..., 3)`` float32 CIELAB (L* 0..100, a*, b*)."""
    flat = np.asarray(rgb_u8).reshape(-1, 1, 3).astype(np.float32) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(np.shape(rgb_u8))


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """``(..., 3)`` float32 CIELAB -> ``(..., 3)`` float32 sRGB in [0, 1] (OpenCV clips out-of-gamut values)."""
    flat = lab.reshape(-1, 1, 3).astype(np.float32)
    return np.clip(cv2.cvtColor(flat, cv2.COLOR_Lab2RGB), 0.0, 1.0).reshape(lab.shape)


def resolve_color(color: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """A palette name (case-insensitive; ``"Dark Brown"``, ``"dark-brown"`` work), a hex colour (``"#b08d57"``,
    ``"#fc0"``) or an ``(R, G, B)`` tuple of ints in 0..255 -> the sRGB uint8 triple.

    Raises:
        ValueError: unknown name (the message lists the valid names and the hex form) or a malformed tuple.
    """
    if isinstance(color, str):
        key = re.sub(r"[\s-]+", "_", color.strip().lower())
        if key in HAIR_COLORS:
            return HAIR_COLORS[key]
        match = _HEX.match(color.strip())
        if match:
            digits = match.group(1)
            if len(digits) == 3:
                digits = "".join(c * 2 for c in digits)
            return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
        raise ValueError(f"unknown hair colour {color!r}; valid names: {', '.join(HAIR_COLORS)}, "
                         "or a hex colour like '#b08d57'")
    rgb = tuple(color)
    if len(rgb) != 3 or not all(isinstance(c, int | np.integer) and 0 <= int(c) <= 255 for c in rgb):
        raise ValueError(
            f"colour: expected a palette name, a hex colour or an (R, G, B) tuple of ints 0..255, got {color!r}"
        )
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def color_label(color: str | tuple[int, int, int]) -> str:
    """A file-name-safe label: the palette name (lower case, ``_``) or the hex digits (``"b08d57"``).

    Raises:
        ValueError: as :func:`resolve_color`.
    """
    rgb = resolve_color(color)
    if isinstance(color, str):
        key = re.sub(r"[\s-]+", "_", color.strip().lower())
        if key in HAIR_COLORS:
            return key
    return "{:02x}{:02x}{:02x}".format(*rgb)


def default_feather_px(out_size: tuple[int, int]) -> float:
    """Guided-filter radius (px) for a photo of ``(H, W)`` px: :data:`FEATHER_FRACTION` of the long side, >= 1."""
    return max(1.0, FEATHER_FRACTION * max(out_size))


def default_guard_px(out_size: tuple[int, int]) -> int:
    """Anti-bleed guard band (px) for a photo of ``(H, W)`` px: :data:`GUARD_FRACTION` of the long side, >= 2."""
    return max(2, math.ceil(GUARD_FRACTION * max(out_size)))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _colour_guard(image: np.ndarray, core: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Weight in [0, 1] per pixel of ``band``: 1 for hair-like colours, fading for colours far from the hair.

    The hair's colour model is the mean and standard deviation of CIELAB over ``core`` (confident hair). A
    band pixel at normalised distance ``d = sqrt(mean(((lab - mean) / std)^2))`` gets ``exp(-(max(d - 2,
    0))^2 / 2)``: within 2 standard deviations untouched, skin or background of another colour fades out.
    """
    weight = np.ones(band.shape, np.float32)
    if core.sum() < 50 or not band.any():
        return weight
    lab_core = _srgb_to_lab(image[core][:: max(1, int(core.sum()) // 20_000)])  # a strided subsample suffices
    mean, std = lab_core.mean(axis=0), np.maximum(lab_core.std(axis=0), 3.0)
    d = np.sqrt((((_srgb_to_lab(image[band]) - mean) / std) ** 2).mean(axis=1))
    weight[band] = np.exp(-0.5 * np.maximum(d - 2.0, 0.0) ** 2)
    return weight


def postprocess_mask(
    prob: np.ndarray,
    out_size: tuple[int, int],
    *,
    image: np.ndarray | None = None,
    threshold: float = 0.5,
    feather_px: float | None = None,
    guard_px: int | None = None,
    eps: float = GUIDED_EPS,
) -> np.ndarray:
    """Turn a model's hair probability into a soft alpha mask at the photo's size.

    Steps:

    1. bilinear resize of the probability to ``out_size`` (kept soft: wisps at 0.3 stay 0.3);
    2. edge refinement: with ``image``, He et al.'s guided filter (``cv2.ximgproc.guidedFilter``, guide =
       the photo in [0, 1], radius ``ceil(feather_px)``, ``eps``), so the alpha edge follows the photo's
       edges; without it, a Gaussian blur of sigma ``feather_px`` (0 = no smoothing);
    3. anti-bleed: alpha is 0 outside the thresholded mask (``prob >= threshold``) dilated by ``guard_px``
       (elliptical element); with ``image``, inside that band (outside the mask eroded by ``guard_px``)
       and within ``3 * guard_px`` inside it, alpha is also multiplied by a colour guard that fades pixels whose
       CIELAB colour is more than 2 standard deviations from the confident hair's (the mask eroded by
       ``3 * guard_px``): skin next to dark hair, a bright forehead under a mask that overshoots.

    Args:
        prob: ``(h, w)`` float hair probability in [0, 1] (any size, e.g. the model's 384x384).
        out_size: ``(H, W)`` of the photo, px.
        image: ``(H, W, 3)`` uint8 RGB photo used as the guide (recommended), or ``None``.
        threshold: probability threshold in (0, 1) that defines the mask the guard band is grown from.
        feather_px: filter radius (guided) / sigma (Gaussian) in px; default :func:`default_feather_px`
            (0.6% of the long side).
        guard_px: guard band in px; default :func:`default_guard_px` (1% of the long side); 0 = no guard
            (the refined probability as it is).
        eps: guided-filter regularisation (guide scaled to [0, 1]).

    Returns:
        ``(H, W)`` uint8 alpha, 0..255 (255 = fully hair).

    Raises:
        ValueError: ``prob`` is not a 2-D array with values in [0, 1]; bad size, image or parameters.
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
    height, width = int(out_size[0]), int(out_size[1])
    feather_px = default_feather_px((height, width)) if feather_px is None else float(feather_px)
    guard_px = default_guard_px((height, width)) if guard_px is None else int(guard_px)
    if feather_px < 0 or guard_px < 0 or eps <= 0:
        raise ValueError(f"feather_px and guard_px must be >= 0 and eps > 0, got {feather_px}, {guard_px}, {eps}")
    if image is not None:
        image = np.asarray(image)
        if image.shape != (height, width, 3) or image.dtype != np.uint8:
            raise ValueError(f"image: expected ({height}, {width}, 3) uint8 RGB, got {image.shape} {image.dtype}")

    soft = cv2.resize(prob.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    binary = (soft >= threshold).astype(np.uint8)
    if feather_px > 0 and image is not None:
        radius = max(1, math.ceil(feather_px))
        alpha = soft.copy()
        # Filter only the box around the guard band (+ 2 radii): every pixel the guard keeps sees the same
        # window as in the whole photo; pixels outside the box are zeroed by the guard anyway.
        reach = cv2.dilate(binary, _disk(guard_px)) if guard_px > 0 else (soft > 0).astype(np.uint8)
        ys, xs = np.nonzero(reach)
        if len(ys):
            margin = 2 * radius + 1
            y0, y1 = max(0, ys.min() - margin), min(height, ys.max() + margin + 1)
            x0, x1 = max(0, xs.min() - margin), min(width, xs.max() + margin + 1)
            guide = image[y0:y1, x0:x1].astype(np.float32) / 255.0
            alpha[y0:y1, x0:x1] = cv2.ximgproc.guidedFilter(guide, soft[y0:y1, x0:x1], radius, eps)
    elif feather_px > 0:
        ksize = 2 * math.ceil(3.0 * feather_px) + 1
        alpha = cv2.GaussianBlur(soft, (ksize, ksize), sigmaX=feather_px, sigmaY=feather_px,
                                 borderType=cv2.BORDER_REPLICATE)
    else:
        alpha = soft
    alpha = np.clip(alpha, 0.0, 1.0)
    if guard_px > 0:
        guard = cv2.dilate(binary, _disk(guard_px), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        alpha = alpha * guard
        if image is not None:
            # The colour guard reaches 3 guard widths inside the mask, where a model's mask overshoots.
            core = cv2.erode(binary, _disk(3 * guard_px), borderType=cv2.BORDER_CONSTANT, borderValue=1)
            core = core.astype(bool)
            alpha = alpha * _colour_guard(image, core, guard.astype(bool) & ~core)
    return np.rint(alpha * 255.0).astype(np.uint8)


def _soft_clip(x: np.ndarray, softness: float = _SOFT_CLIP) -> np.ndarray:
    """Smooth, monotonic map of L* values into (0, 100): softplus at both ends, ~identity in between."""
    lo = softness * np.logaddexp(0.0, x / softness)
    return 100.0 - softness * np.logaddexp(0.0, (100.0 - lo) / softness)


def _fit_gamut(lab: np.ndarray) -> np.ndarray:
    """Lower the chroma of out-of-gamut ``(P, 3)`` CIELAB colours (hue and L* kept) until sRGB holds them.

    A colour is in gamut when its sRGB round trip (OpenCV, clipped to [0, 1]) moves it by < 1 Delta E*ab;
    the largest in-gamut chroma factor is found by bisection (10 steps, L* alone is always in gamut).
    """
    lab = lab.astype(np.float32).copy()
    roundtrip = _srgb_to_lab((_lab_to_srgb(lab) * 255.0 + 0.5).astype(np.uint8))
    out = np.linalg.norm(roundtrip - lab, axis=1) > 1.5
    if not out.any():
        return lab
    sub = lab[out]
    lo, hi = np.zeros(len(sub), np.float32), np.ones(len(sub), np.float32)
    for _ in range(10):
        mid = (lo + hi) / 2
        trial = sub.copy()
        trial[:, 1:] *= mid[:, None]
        rt = _lab_to_srgb(trial)
        back = cv2.cvtColor(rt.reshape(-1, 1, 3), cv2.COLOR_RGB2Lab).reshape(-1, 3)
        ok = np.linalg.norm(back - trial, axis=1) < 0.5
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    sub[:, 1:] *= lo[:, None]
    lab[out] = sub
    return lab


def target_lightness(l_hair: np.ndarray, weight: np.ndarray, target_l: float) -> np.ndarray:
    """New L* of hair pixels: the distribution moved to mean ``target_l``, relative variation kept.

    ``L' = soft_clip(target_l + d + s * (L - mean_L))`` with ``s = clip(sqrt(target_l / mean_L), 0.8, 1.5)``
    (offsets from the mean, i.e. strands and highlights, are kept, a little stronger on lightened and a
    little weaker on darkened hair), ``soft_clip`` a smooth map into (0, 100) (softplus at both ends), and the
    offset ``d`` found by bisection (on an evenly strided subsample of at most 20 000 pixels) so that the
    ``weight``-weighted mean of ``L'`` is ``target_l``.

    Args:
        l_hair: ``(P,)`` float L* (0..100) of the hair pixels.
        weight: ``(P,)`` float weights (the alpha), not all 0.
        target_l: target L*, 0..100.

    Returns:
        ``(P,)`` float32 L* in (0, 100).
    """
    weight = weight.astype(np.float64)
    l_hair = l_hair.astype(np.float64)
    mean_l = float(np.sum(weight * l_hair) / np.sum(weight))
    scale = float(np.clip(math.sqrt(max(target_l, 1.0) / max(mean_l, 1.0)), _S_MIN, _S_MAX))
    centred = scale * (l_hair - mean_l)
    # the offset is found on an evenly strided subsample of at most 20 000 pixels (deterministic)
    step = max(1, len(centred) // 20_000)
    sub_c, sub_w = centred[::step].astype(np.float32), weight[::step].astype(np.float32)
    lo, hi = -100.0, 100.0
    for _ in range(24):  # 200 / 2^24: far below a just-noticeable L* step
        d = (lo + hi) / 2
        mean_new = float(np.sum(sub_w * _soft_clip(target_l + d + sub_c)) / np.sum(sub_w))
        lo, hi = (d, hi) if mean_new < target_l else (lo, d)
    return _soft_clip(target_l + (lo + hi) / 2 + centred).astype(np.float32)


def recolor_hair(
    image: np.ndarray,
    mask: np.ndarray,
    color: str | tuple[int, int, int],
    strength: float = 1.0,
) -> np.ndarray:
    """Recolour the hair of an RGB photo to a target shade, keeping its texture, blended by the alpha mask.

    Per hair pixel (alpha > 0), in CIELAB / LCh:

    - lightness: :func:`target_lightness` moves the hair's L* distribution (mean over pixels weighted by
      alpha^2, so the boundary counts little) to the target's L*, keeping each pixel's offset from the mean;
    - colour: hue = the target's hue, chroma ``C_t * clip(L' / L_t, 0.35, 1)`` (strands in shadow take a
      darker, less saturated version of the shade, never more chroma than the target); colours outside
      sRGB lose chroma, not lightness (:func:`_fit_gamut`);
    - ``out = image + strength * alpha / 255 * (recoloured - image)`` in sRGB, rounded to uint8.

    Deterministic (no randomness; the same inputs give the same bytes). Pixels with alpha 0 are copied
    bit-for-bit from ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 sRGB photo.
        mask: ``(H, W)`` uint8 alpha 0..255 (e.g. from :func:`postprocess_mask`).
        color: a :data:`HAIR_COLORS` name (case-insensitive), a hex colour or an ``(R, G, B)`` tuple 0..255.
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
    new_l = target_lightness(lab[:, 0], alpha**2, l_t)
    # The recoloured colour depends on L' alone (hue fixed, chroma a function of L'), so it is computed
    # once on a table of 2001 L' values (0.05 L* apart) and interpolated per pixel.
    lut_l = np.linspace(0.0, 100.0, 2001, dtype=np.float32)
    chroma_scale = np.clip(lut_l / max(l_t, 1e-3), 0.35, 1.0)
    lut_lab = np.stack([lut_l, a_t * chroma_scale, b_t * chroma_scale], axis=1).astype(np.float32)
    lut_rgb = _lab_to_srgb(_fit_gamut(lut_lab)) * 255.0  # (2001, 3)
    recoloured = np.stack([np.interp(new_l, lut_l, lut_rgb[:, c]) for c in range(3)], axis=1).astype(np.float32)

    weight = (strength * alpha)[:, None]
    src = pixels.astype(np.float32)
    blended = src + weight * (recoloured - src)
    out[hair] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def palette_sheet(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    colors: tuple[str, ...] | None = None,
    strength: float = 1.0,
    tile_long_side: int = 320,
    columns: int = 5,
) -> np.ndarray:
    """A contact sheet: the photo recoloured in every palette colour, each tile labelled with its name.

    The photo and its alpha are downscaled (area interpolation) so the long side is ``tile_long_side`` px,
    recoloured with :func:`recolor_hair`, and laid out ``columns`` per row with a 28 px white strip under each
    tile holding the colour's name (``cv2.putText``, Hershey simplex).

    Args:
        image: ``(H, W, 3)`` uint8 RGB photo.
        mask: ``(H, W)`` uint8 alpha 0..255.
        colors: names to show; default all of :data:`HAIR_COLORS` in order.
        strength: recolour strength in [0, 1].
        tile_long_side: long side of each tile, px.
        columns: tiles per row.

    Returns:
        ``(rows * (h + 28), columns * w, 3)`` uint8 RGB.

    Raises:
        ValueError: as :func:`recolor_hair`.
    """
    names = tuple(colors) if colors is not None else tuple(HAIR_COLORS)
    height, width = image.shape[:2]
    scale = min(1.0, tile_long_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image
    small_mask = cv2.resize(mask, size, interpolation=cv2.INTER_AREA) if scale < 1 else mask
    strip = 28
    tiles = []
    for name in names:
        tile = np.full((small.shape[0] + strip, small.shape[1], 3), 255, np.uint8)
        tile[: small.shape[0]] = recolor_hair(small, small_mask, name, strength)
        cv2.putText(tile, color_label(name), (6, small.shape[0] + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)

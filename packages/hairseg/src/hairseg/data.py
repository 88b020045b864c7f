"""Hair-segmentation data: dataset discovery, seeded splits, a memory-mapped resize cache, augmentation.

Layouts (``root`` may be the dataset's own folder or the folder that contains it):

- Figaro-1k (Svanera et al., "Figaro, hair detection and segmentation in the wild", ICIP 2016):
  ``Original/{Training,Testing}/FrameNNNNN-org.jpg`` + ``GT/{Training,Testing}/FrameNNNNN-gt.pbm``
  (PBM, 1 = hair). ``val`` is carved out of ``Training`` by a seeded permutation, ``test`` is ``Testing``
  (carved from ``Training`` too when a copy has no ``Testing``).
- Generic folder (e.g. ``lfw_hair``): ``images/NAME.jpg`` + ``masks/NAME.png`` (0 / 255);
  no official split, so train/val/test are carved by fractions.

Photos are loaded upright (EXIF orientation applied) and letterboxed to ``S x S`` (long side resized to S,
aspect ratio kept, bilinear antialiased; masks nearest; padded bottom/right with 0) once and cached as uint8 ``.npy``
arrays that later epochs read through ``np.load(mmap_mode="r")``, so only the first epoch decodes JPEG.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm import tqdm

from mlcore.data import IMAGENET_MEAN, IMAGENET_STD, DataError, Split, check_split  # noqa: F401  (re-exported)  # noqa: F401  (DataError: hairseg.data's error, re-exported)
from mlcore.images import load_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".pbm", ".bmp", ".gif", ".tif", ".tiff")
_CACHE_VERSION = "hairseg-cache-v2"  # bump when resizing/binarisation changes (v2: letterbox, EXIF)



@dataclass(frozen=True)
class HairSample:
    """One pair: ``image`` (RGB photo), ``mask`` (binary hair mask, same size), ``name`` (file stem)."""

    image: Path
    mask: Path
    name: str


def open_upright(im: Image.Image) -> Image.Image:
    """``PIL.ImageOps.exif_transpose``: the image as displayed (EXIF orientation 2-8 applied, tag removed)."""
    return ImageOps.exif_transpose(im)


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to ``(H, W, 3) uint8`` RGB, upright. Raises ``DataError`` when it cannot be read.

    The EXIF orientation tag is applied (:func:`mlcore.images.load_rgb`, ``PIL.ImageOps.exif_transpose``), so a
    phone photo stored sideways
    with orientation 6 comes back at its displayed size and the right way up. Masks are loaded the same way
    (:func:`load_mask`), and :func:`check_pair` compares the displayed sizes.
    """
    try:
        return load_rgb(path)  # mlcore's one loader: EXIF orientation applied, then RGB
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def load_mask(path: str | Path) -> np.ndarray:
    """Decode a hair mask to ``(H, W) uint8`` in {0, 1} (1 = hair), upright (EXIF orientation applied).

    Bilevel (PBM, mode ``1``) and palette masks: any value > 0 is hair. Greyscale/RGB masks (PNG 0/255):
    > 127 is hair, except masks whose maximum is 1 (already 0/1 class indices), where > 0 is hair.
    Raises ``DataError`` when unreadable.
    """
    try:
        with Image.open(path) as im:
            im = open_upright(im)
            if im.mode in ("1", "P"):
                return (np.asarray(im) > 0).astype(np.uint8)
            arr = np.asarray(im.convert("L"))
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read mask {path}: {err}") from err
    return (arr > (0 if arr.max(initial=0) <= 1 else 127)).astype(np.uint8)


def letterbox_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` of a ``height x width`` photo resized so its long side is ``size`` px (aspect ratio kept)."""
    scale = size / max(height, width)
    return max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))


def letterbox(image: np.ndarray, size: int, *, resample: Image.Resampling = Image.Resampling.BILINEAR,
              ) -> np.ndarray:
    """Resize so the long side is ``size`` px (aspect ratio kept), then pad bottom/right with 0 to ``size x size``.

    Args:
        image: ``(H, W, 3)`` or ``(H, W)`` uint8.
        size: S, px (a multiple of the network's stride, 32).
        resample: PIL filter; BILINEAR (antialiased when downscaling) for photos, NEAREST for masks.

    Returns:
        ``(S, S, 3)`` / ``(S, S)`` uint8; the photo is in the top-left ``letterbox_shape(H, W, S)`` block.
    """
    h, w = letterbox_shape(image.shape[0], image.shape[1], size)
    resized = np.asarray(Image.fromarray(image).resize((w, h), resample))
    out = np.zeros((size, size, *image.shape[2:]), dtype=np.uint8)
    out[:h, :w] = resized
    return out


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    # PIL's BILINEAR widens its filter support when downscaling, i.e. it is antialiased (unlike cv2.resize).
    return letterbox(image, size)


def _load_pair(sample: HairSample, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode and letterbox one pair: ``(S, S, 3) uint8`` image, ``(S, S) uint8`` {0, 1} mask (:func:`letterbox`)."""
    image, mask = load_image(sample.image), load_mask(sample.mask)
    if image.shape[:2] != mask.shape:
        raise DataError(_size_message(sample, mask.shape[::-1], image.shape[1::-1]))
    return _resize_image(image, size), letterbox(mask, size, resample=Image.Resampling.NEAREST)


def _size_message(sample: HairSample, mask_wh: tuple[int, ...], image_wh: tuple[int, ...]) -> str:
    mask_size, image_size = "x".join(map(str, mask_wh)), "x".join(map(str, image_wh))
    return f"mask {sample.mask} is {mask_size} but image {sample.image} is {image_size}"


def check_pair(sample: HairSample) -> None:
    """Cheap header-only check that ``sample.mask`` exists, is readable and has the image's size (px).

    Raises ``DataError`` naming both files otherwise.
    """
    if not sample.mask.is_file():
        raise DataError(f"mask {sample.mask} for image {sample.image} is missing")
    sizes = []
    for kind, path in (("image", sample.image), ("mask", sample.mask)):
        try:
            with Image.open(path) as im:
                # displayed size: EXIF orientations 5-8 swap width and height
                orientation = im.getexif().get(0x0112, 1)
                sizes.append(im.size[::-1] if orientation in (5, 6, 7, 8) else im.size)
        except (OSError, ValueError) as err:
            raise DataError(
                f"cannot read {kind} {path} (pair: {sample.image}, {sample.mask}): {err}"
            ) from err
    if sizes[0] != sizes[1]:
        raise DataError(_size_message(sample, sizes[1], sizes[0]))


def _layout_of(folder: Path) -> str | None:
    layouts = {"figaro": ("Original", "GT"), "folder": ("images", "masks")}
    return next((k for k, subs in layouts.items() if all((folder / d).is_dir() for d in subs)), None)


def _locate(root: Path) -> tuple[str, Path]:
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist or is not a folder")
    if kind := _layout_of(root):
        return kind, root
    # Descend only into a lone sub-folder (an unpacked archive), never pick one dataset out of many.
    subs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__MACOSX"))]
    if len(subs) == 1 and (kind := _layout_of(subs[0])):
        return kind, subs[0]
    raise DataError(
        f"no hair dataset in {root}: expected Figaro-1k (Original/Training/*-org.jpg + GT/Training/*-gt.pbm)"
        " or images/NAME.jpg + masks/NAME.png, in that folder or in its only sub-folder"
    )


def _figaro_pairs(root: Path, split: str) -> list[HairSample]:
    out = []
    for image in sorted((root / "Original" / split).glob("*-org.*")):
        if image.suffix.lower() in IMAGE_SUFFIXES:
            name = image.name[: image.name.rindex("-org.")]
            out.append(HairSample(image, root / "GT" / split / f"{name}-gt.pbm", name))
    return out


def _folder_pairs(root: Path) -> list[HairSample]:
    out = []
    for image in sorted((root / "images").iterdir()):
        if image.suffix.lower() in IMAGE_SUFFIXES:
            masks = [root / "masks" / f"{image.stem}{s}" for s in MASK_SUFFIXES]
            mask = next((m for m in masks if m.is_file()), masks[0])
            out.append(HairSample(image, mask, image.stem))
    return out


def find_samples(
    root: str | Path,
    split: Split,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> list[HairSample]:
    """List the image/mask pairs of one split, sorted by name.

    Figaro-1k: ``test`` is the official ``Testing`` folder and ``val`` is ``round(val_fraction * n)`` samples of
    ``Training`` chosen by a permutation seeded with ``seed``, ``train`` the rest. A copy without ``Testing``
    (the 840-photo sample) carves ``test`` (``round(test_fraction * n)``) and then ``val`` from ``Training`` by
    the same seeded permutation, so there are always three disjoint splits.
    Folder layout: ``test`` then ``val`` are carved from one seeded permutation by fractions, ``train`` is
    the rest. ``all`` is every sample found. The split depends only on file names, fractions and seed.

    Raises ``DataError`` when no known layout is under ``root``, or when a returned pair is missing,
    unreadable or of mismatched size (checked from the file headers).
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1), sum < 1"
        )
    check_split(split)
    kind, base = _locate(Path(root).expanduser())
    rng = np.random.default_rng(seed)  # split only; augmentation draws from the global RNGs
    if kind == "figaro":
        training, testing = _figaro_pairs(base, "Training"), _figaro_pairs(base, "Testing")
        if not training:
            raise DataError(
                f"no Figaro-1k training images in {base / 'Original' / 'Training'} (expected *-org.jpg)"
            )
        n_val = round(val_fraction * len(training))
        perm = rng.permutation(len(training))
        if testing:  # the official split: test = Testing, val carved from Training
            parts = {"val": perm[:n_val], "train": perm[n_val:]}
        else:  # a copy without Testing (e.g. the sample): test, then val, carved from Training by seed
            n_test = round(test_fraction * len(training))
            parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
        if split in parts:
            chosen = [training[i] for i in sorted(parts[split])]
        else:
            chosen = testing if split == "test" else training + testing
    else:
        pairs = _folder_pairs(base)
        if not pairs:
            raise DataError(f"no images in {base / 'images'} (expected {', '.join(IMAGE_SUFFIXES)})")
        n_test, n_val = round(test_fraction * len(pairs)), round(val_fraction * len(pairs))
        perm = rng.permutation(len(pairs))
        parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
        chosen = pairs if split == "all" else [pairs[i] for i in sorted(parts[split])]
    for sample in chosen:
        check_pair(sample)
    return chosen


def default_cache_dir() -> Path:
    """``$HAIRSEG_CACHE`` if set, else ``~/.cache/hairseg``."""
    return Path(os.environ.get("HAIRSEG_CACHE") or Path.home() / ".cache" / "hairseg").expanduser()


def cache_key(samples: list[HairSample], image_size: int) -> str:
    """Hex digest of the source paths, ``image_size`` and each file's stamp (``st_mtime_ns``, ``st_size``)."""
    entries: list[Any] = [_CACHE_VERSION, image_size]
    for s in samples:
        for path in (s.image, s.mask):
            st = path.stat()
            entries.append([str(path.resolve()), st.st_mtime_ns, st.st_size])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:20]


def _cache_paths(samples: list[HairSample], image_size: int, cache_dir: Path) -> tuple[Path, Path]:
    stem = f"s{image_size}_n{len(samples)}_{cache_key(samples, image_size)}"
    return cache_dir / f"{stem}_images.npy", cache_dir / f"{stem}_masks.npy"


def build_cache(
    samples: list[HairSample], image_size: int, cache_dir: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return memory-mapped ``images (N, S, S, 3) uint8`` and ``masks (N, S, S) uint8`` {0, 1}, decoding once.

    The arrays are written to ``cache_dir`` (default :func:`default_cache_dir`) as ``.npy`` under a name
    keyed by :func:`cache_key`, so a changed file stamp, path list or size makes a new cache. Each file is
    written to a temporary name and moved in place with ``os.replace`` (safe with concurrent builders).
    Raises ``DataError`` on an unreadable or mismatched pair.
    """
    n, s = len(samples), image_size
    if n == 0:
        return np.zeros((0, s, s, 3), np.uint8), np.zeros((0, s, s), np.uint8)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    paths = _cache_paths(samples, s, folder)
    shapes = ((n, s, s, 3), (n, s, s))
    try:
        cached = [np.load(p, mmap_mode="r") for p in paths]
        if [a.shape for a in cached] == list(shapes) and all(a.dtype == np.uint8 for a in cached):
            return cached[0], cached[1]
    except (OSError, ValueError):  # missing or truncated: (re)build
        pass
    temps = []
    for path in paths:
        fd, name = tempfile.mkstemp(dir=folder, prefix=path.stem, suffix=".tmp.npy")
        os.close(fd)
        temps.append(Path(name))
    try:
        images = np.lib.format.open_memmap(temps[0], mode="w+", dtype=np.uint8, shape=shapes[0])
        masks = np.lib.format.open_memmap(temps[1], mode="w+", dtype=np.uint8, shape=shapes[1])
        for i, sample in enumerate(tqdm(samples, desc=f"hairseg cache {s}px", disable=None)):
            images[i], masks[i] = _load_pair(sample, s)
        images.flush()
        masks.flush()
        del images, masks
        for temp, path in zip(temps, paths, strict=True):
            os.replace(temp, path)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return np.load(paths[0], mmap_mode="r"), np.load(paths[1], mmap_mode="r")


def _normalise(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.float32}, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]


def train_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Joint augmentation of ``tv_tensors.Image (3, S, S) uint8`` + ``tv_tensors.Mask (1, S, S) uint8``.

    Per the hair-segmentation plan (section 2.3): horizontal flip (p=0.5), rotation up to 15 degrees
    (p=0.3; nearest for the mask, zero fill = background), colour jitter (brightness/contrast/saturation
    0.2, hue 0.1; p=0.5) and Gaussian blur (kernel 3; p=0.2) on the image only, then normalisation with
    ``mean``/``std`` (the encoder's, :func:`hairseg.models.normalization`; default ImageNet's). All randomness is drawn from the global torch RNG at call time.
    """
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.RandomRotation(15.0)], p=0.3),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)], p=0.5),
            v2.RandomApply([v2.GaussianBlur(kernel_size=3)], p=0.2),
            *_normalise(mean, std),
        ]
    )


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """uint8 Image/Mask -> float32 normalised image (``mean``/``std``, default ImageNet's) and float32 {0, 1}
    mask; no randomness."""
    return v2.Compose(_normalise(mean, std))


def preprocess_image(image: np.ndarray, size: int, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """``(H, W, 3) uint8`` RGB -> ``(1, 3, S, S) float32`` normalised, letterboxed exactly as the cache.

    The photo is resized so its long side is S (aspect ratio kept) and padded bottom/right with black to
    ``S x S`` (:func:`letterbox`); the photo occupies the top-left :func:`letterbox_shape` block. ``mean`` /
    ``std`` (RGB, on 0..1) default to ImageNet's; pass the model's own (its data config / file metadata).

    Raises ``ValueError`` for any other shape or dtype.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"preprocess_image expects an (H, W, 3) uint8 RGB array, got {got}")
    chw = tv_tensors.Image(torch.from_numpy(_resize_image(image, size)).permute(2, 0, 1))
    return eval_transform(mean, std)(chw).as_subclass(torch.Tensor).unsqueeze(0)


class HairSegDataset(torch.utils.data.Dataset):
    """Image/mask pairs resized to ``image_size`` px, optionally augmented.

    ``__getitem__`` returns ``{"image": (3, S, S) float32 normalised with mean/std (the encoder's; default
    ImageNet's), "mask": (1, S, S) float32
    in {0, 1}, "index": int}``. With ``use_cache`` the resized uint8 arrays come from :func:`build_cache`
    (built in ``__init__``, re-opened memory-mapped in each DataLoader worker); without it every item is
    decoded from disk, giving identical pixels. ``train=True`` applies :func:`train_transform`.
    """

    def __init__(
        self,
        samples: list[HairSample],
        image_size: int = 384,
        train: bool = False,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.samples, self.image_size, self.train, self.use_cache = (
            list(samples),
            image_size,
            train,
            use_cache,
        )
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.mean, self.std = tuple(mean), tuple(std)
        self.transform = train_transform(mean, std) if train else eval_transform(mean, std)
        self._arrays = build_cache(self.samples, image_size, self.cache_dir) if use_cache else None
        self._files = [getattr(a, "filename", None) for a in self._arrays or ()]

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its data; DataLoader workers re-open the cache files instead.
        return {**self.__dict__, "_arrays": None if self._files and all(self._files) else self._arrays}

    def load_uint8(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Resized ``(S, S, 3) uint8`` image and ``(S, S) uint8`` {0, 1} mask, before any transform."""
        if not self.use_cache:
            return _load_pair(self.samples[index], self.image_size)
        if self._arrays is None:
            self._arrays = (np.load(self._files[0], mmap_mode="r"), np.load(self._files[1], mmap_mode="r"))
        return np.array(self._arrays[0][index]), np.array(self._arrays[1][index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.load_uint8(index)
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())  # CHW: ~2x faster ops
        msk = tv_tensors.Mask(torch.from_numpy(mask).unsqueeze(0))
        img, msk = self.transform(img, msk)
        return {
            "image": img.as_subclass(torch.Tensor).contiguous(),
            "mask": msk.as_subclass(torch.Tensor).contiguous(),
            "index": index,
        }

"""``hairseg-predict``: hair masks, overlays and recoloured photos for a list of images.

::

    hairseg-predict photo1.jpg photo2.jpg --out results [--model FILE] [--color copper] [--strength 1.0]

For each ``IMAGE`` it writes ``OUT/<stem>_mask.png`` (the post-processed ``(H, W)`` uint8 alpha 0..255 of
:func:`hairseg.inference.segment_hair`), ``OUT/<stem>_overlay.png`` (:func:`hairseg.viz.overlay`) and
``OUT/<stem>_<color>.png`` (:func:`hairseg.recolor.recolor_hair`), all at the photo's own size. ``--model``
takes an mlcore checkpoint, a TorchScript archive or an ONNX file (:func:`hairseg.inference.load_predictor`);
without it ``$HAIRSEG_MODEL`` or the newest entry of ``$HAIRSEG_REGISTRY`` is used. The last line of stdout
is a JSON summary. Exit codes: 0 ok, 1 missing/unreadable image or model, 2 bad flags (an unknown colour
lists the palette).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from hairseg.data import DataError, load_image
from hairseg.inference import (
    ModelFormatError,
    ModelNotConfiguredError,
    Predictor,
    default_model_path,
    load_predictor,
    segment_hair,
)
from hairseg.recolor import HAIR_COLORS, recolor_hair
from hairseg.registry import RegistryError
from hairseg.viz import overlay
from mlcore.cli import ArgumentParser


def output_paths(image: str | Path, out: str | Path, color: str) -> dict[str, Path]:
    """``{"mask", "overlay", "recolor"}`` -> ``OUT/<stem>_mask.png``, ``_overlay.png``, ``_<color>.png``."""
    stem, out = Path(image).stem, Path(out)
    return {"mask": out / f"{stem}_mask.png", "overlay": out / f"{stem}_overlay.png",
            "recolor": out / f"{stem}_{color}.png"}


def predict_images(
    images: Sequence[str | Path],
    out: str | Path,
    predictor: Predictor,
    *,
    color: str = "copper",
    strength: float = 1.0,
    **postprocess: Any,
) -> list[dict[str, Path]]:
    """Segment and recolour every image, writing the three PNGs of :func:`output_paths` per image.

    Args:
        images: photo files (any format PIL reads; decoded as RGB).
        out: output folder (created).
        predictor: any :class:`~hairseg.inference.Predictor`.
        color: a :data:`~hairseg.recolor.HAIR_COLORS` name.
        strength: recolour blend strength in [0, 1].
        **postprocess: ``threshold``, ``feather_px`` (px), ``guard_px`` (px) of ``postprocess_mask``.

    Returns:
        The written paths, one dict per image, in input order.

    Raises:
        DataError: an image cannot be read (the message names it).
        ValueError: unknown colour or bad strength / post-processing parameters.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(images, desc="hairseg-predict", unit="image", disable=None):
        image = load_image(path)
        mask = segment_hair(image, predictor, **postprocess)
        paths = output_paths(path, out, color)
        Image.fromarray(mask).save(paths["mask"])
        Image.fromarray(overlay(image, mask)).save(paths["overlay"])
        Image.fromarray(recolor_hair(image, mask, color, strength)).save(paths["recolor"])
        written.append(paths)
    return written


def build_parser() -> argparse.ArgumentParser:
    """The ``hairseg-predict`` argument parser."""
    p = ArgumentParser(prog="hairseg-predict", description=__doc__.splitlines()[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="photo files")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint, TorchScript or ONNX file (default: $HAIRSEG_MODEL or newest $HAIRSEG_REGISTRY entry)")
    p.add_argument("--color", default="copper", help=f"hair colour: one of {', '.join(HAIR_COLORS)}")
    p.add_argument("--strength", type=float, default=1.0, help="recolour strength in [0, 1]")
    p.add_argument("--threshold", type=float, default=0.5, help="hair probability threshold in (0, 1)")
    p.add_argument("--feather-px", type=float, default=2.0, help="edge feather (Gaussian sigma), px")
    p.add_argument("--guard-px", type=int, default=2, help="anti-bleed guard band around the mask, px")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``hairseg-predict`` (0 ok, 1 missing/unreadable image or model, 2 bad flags)."""
    from mlcore.checkpoint import CheckpointError
    from mlcore.cli import run_cli
    from mlcore.config import ConfigError

    def run() -> int:
        args = build_parser().parse_args(argv)
        if args.color not in HAIR_COLORS:
            raise ConfigError(f"--color: unknown colour {args.color!r}; choose one of {', '.join(HAIR_COLORS)}")
        if not 0.0 <= args.strength <= 1.0:
            raise ConfigError(f"--strength must be in [0, 1] (got {args.strength})")
        if not 0.0 < args.threshold < 1.0:
            raise ConfigError(f"--threshold must be in (0, 1) (got {args.threshold})")
        if args.feather_px < 0 or args.guard_px < 0:
            raise ConfigError(f"--feather-px and --guard-px must be >= 0 (got {args.feather_px}, {args.guard_px})")
        stems: dict[str, Path] = {}
        for image in args.images:
            if not image.is_file():
                raise FileNotFoundError(f"image not found: {image}")
            if image.stem in stems:
                raise ConfigError(f"{stems[image.stem]} and {image} would write the same outputs ({image.stem}_*.png)")
            stems[image.stem] = image
        model = args.model if args.model is not None else default_model_path()
        predictor = load_predictor(model, device=args.device)
        written = predict_images(args.images, args.out, predictor, color=args.color, strength=args.strength,
                                 threshold=args.threshold, feather_px=args.feather_px, guard_px=args.guard_px)
        print(json.dumps({"model": str(model), "predictor": predictor.name, "images": len(written),
                          "out": str(args.out), "color": args.color}))
        return 0

    return run_cli(run, prog="hairseg-predict",
                   user_errors=(DataError, ModelFormatError, ModelNotConfiguredError, RegistryError, CheckpointError))


if __name__ == "__main__":
    raise SystemExit(main())

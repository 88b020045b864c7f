"""``hairseg-predict``: hair masks, overlays and recoloured photos (or a recoloured video).

::

    hairseg-predict photo1.jpg photo2.jpg --out results [--model FILE] [--color copper|"#b08d57"] [--strength 1.0]
    hairseg-predict photo.jpg --mask photo_mask.png --color blonde --out results     # a mask from elsewhere
    hairseg-predict photo.jpg --palette-sheet sheet.png [--model FILE]              # all 10 colours, named
    hairseg-predict clip.mp4 --color blue --out clip_blue.mp4 [--smooth 0.6]         # video (PyAV)

For each photo it writes ``OUT/<stem>_mask.png`` (the ``(H, W)`` uint8 soft alpha 0..255 of
:func:`hairseg.inference.segment_hair`, or of ``--mask`` refined the same way), ``OUT/<stem>_overlay.png``
(:func:`hairseg.viz.overlay`) and ``OUT/<stem>_<color>.png`` (:func:`hairseg.recolor.recolor_hair`), all at the
photo's displayed size (EXIF orientation applied). ``--model`` takes an mlcore checkpoint, a TorchScript archive,
an ONNX file or a MediaPipe Tasks ``.tflite`` (:func:`hairseg.inference.load_predictor`); without it
``$HAIRSEG_MODEL`` or the newest entry of ``$HAIRSEG_REGISTRY`` is used. A video (``.mp4``/``.mov``/``.mkv``/
``.webm``/``.avi``) is decoded and re-encoded with PyAV (H.264), its hair probability smoothed over time by an
exponential moving average (``--smooth``) so the mask does not flicker. The last line of stdout is a JSON
summary. Exit codes: 0 ok, 1 missing/unreadable image, mask, video or model, 2 bad flags.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from hairseg.data import DataError, load_image
from hairseg.inference import (
    ModelFormatError,
    ModelNotConfiguredError,
    Predictor,
    default_model_path,
    load_predictor,
)
from hairseg.recolor import (
    HAIR_COLORS,
    color_label,
    palette_sheet,
    postprocess_mask,
    recolor_hair,
    resolve_color,
)
from hairseg.registry import RegistryError
from hairseg.viz import overlay
from mlcore.cli import ArgumentParser

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def output_paths(image: str | Path, out: str | Path, color: str) -> dict[str, Path]:
    """``{"mask", "overlay", "recolor"}`` -> ``OUT/<stem>_mask.png``, ``_overlay.png``, ``_<label>.png``
    (``label`` = the palette name or the hex digits, :func:`hairseg.recolor.color_label`)."""
    stem, out = Path(image).stem, Path(out)
    return {"mask": out / f"{stem}_mask.png", "overlay": out / f"{stem}_overlay.png",
            "recolor": out / f"{stem}_{color_label(color)}.png"}


def load_alpha_file(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A user's mask file -> ``(H, W) float32`` hair probability in [0, 1], upright (EXIF applied).

    Bilevel (PBM, mode ``1``) and 0/1 masks: 1 = hair; greyscale/RGB: value / 255 (so soft mattes stay soft).

    Raises:
        DataError: unreadable, or its size differs from the photo's ``shape`` (the message names both).
    """
    from hairseg.data import open_upright

    try:
        with Image.open(path) as im:
            im = open_upright(im)
            if im.mode in ("1", "P"):
                prob = (np.asarray(im) > 0).astype(np.float32)
            else:
                arr = np.asarray(im.convert("L"))
                prob = arr.astype(np.float32) / (1.0 if arr.max(initial=0) <= 1 else 255.0)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read mask {path}: {err}") from err
    if prob.shape != tuple(shape):
        raise DataError(f"--mask {path} is {prob.shape[1]}x{prob.shape[0]} but the photo is {shape[1]}x{shape[0]}")
    return prob


def predict_images(
    images: Sequence[str | Path],
    out: str | Path,
    predictor: Predictor | None,
    *,
    color: str = "copper",
    strength: float = 1.0,
    masks: Sequence[str | Path] | None = None,
    **postprocess: Any,
) -> list[dict[str, Path]]:
    """Segment and recolour every image, writing the three PNGs of :func:`output_paths` per image.

    Args:
        images: photo files (any format PIL reads; decoded as RGB, EXIF orientation applied).
        out: output folder (created).
        predictor: any :class:`~hairseg.inference.Predictor`; ``None`` when ``masks`` are given.
        color: a palette name (any case) or a hex colour.
        strength: recolour blend strength in [0, 1].
        masks: one mask file per image used instead of the predictor (:func:`load_alpha_file`).
        **postprocess: ``threshold``, ``feather_px`` (px), ``guard_px`` (px) of ``postprocess_mask``.

    Returns:
        The written paths, one dict per image, in input order.

    Raises:
        DataError: an image or mask cannot be read or sizes differ (the message names it).
        ValueError: unknown colour or bad strength / post-processing parameters.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, path in enumerate(tqdm(images, desc="hairseg-predict", unit="image", disable=None)):
        image = load_image(path)
        if masks is not None:
            prob = load_alpha_file(masks[i], image.shape[:2])
        else:
            prob = np.asarray(predictor.predict_proba(image), dtype=np.float32)
        mask = postprocess_mask(prob, image.shape[:2], image=image, **postprocess)
        paths = output_paths(path, out, color)
        Image.fromarray(mask).save(paths["mask"])
        Image.fromarray(overlay(image, mask)).save(paths["overlay"])
        Image.fromarray(recolor_hair(image, mask, color, strength)).save(paths["recolor"])
        written.append(paths)
    return written


def predict_video(
    video: str | Path,
    out: str | Path,
    predictor: Predictor,
    *,
    color: str = "copper",
    strength: float = 1.0,
    smooth: float = 0.6,
    max_frames: int | None = None,
    **postprocess: Any,
) -> dict[str, Any]:
    """Recolour the hair in every frame of a video with PyAV; the hair probability is smoothed over time.

    Per frame: ``prob_t`` from the predictor, then ``ema_t = smooth * ema_{t-1} + (1 - smooth) * prob_t``
    (``ema_0 = prob_0``), :func:`postprocess_mask` with the frame as guide, :func:`recolor_hair`. The output is
    H.264 (``libx264``, yuv420p; ``mpeg4`` where libx264 is missing) at the input's frame rate; odd frame sizes
    are cropped by one pixel (yuv420p needs even sizes). Audio is not copied.

    Args:
        video: input video file (anything FFmpeg decodes).
        out: output video file (its suffix chooses the container).
        predictor: any :class:`~hairseg.inference.Predictor`.
        color, strength: as :func:`recolor_hair`.
        smooth: weight of the previous frames in the moving average, in [0, 1) (0 = no smoothing).
        max_frames: stop after this many frames (``None`` = all).
        **postprocess: ``threshold``, ``feather_px``, ``guard_px`` of :func:`postprocess_mask`.

    Returns:
        ``{"frames", "fps" (input frame rate), "seconds", "frames_per_s" (processing speed), "size"}``.

    Raises:
        DataError: the file cannot be opened or decoded, or has no video stream.
    """
    import av

    video, out = Path(video), Path(out)
    try:
        source = av.open(str(video))
    except (av.FFmpegError, OSError) as err:
        raise DataError(f"cannot read video {video}: {err}") from err
    start = time.perf_counter()
    frames = 0
    try:
        if not source.streams.video:
            raise DataError(f"{video}: no video stream")
        stream_in = source.streams.video[0]
        rate = stream_in.average_rate or 25
        out.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(out), mode="w") as sink:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            stream_out = sink.add_stream(codec, rate=rate)
            stream_out.pix_fmt = "yuv420p"
            ema = None
            try:
                decoded = source.decode(stream_in)
                for frame in tqdm(decoded, desc="hairseg-predict video", unit="frame", disable=None):
                    if max_frames is not None and frames >= max_frames:
                        break
                    rgb = frame.to_ndarray(format="rgb24")
                    rgb = np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])
                    if frames == 0:
                        stream_out.width, stream_out.height = rgb.shape[1], rgb.shape[0]
                    prob = np.asarray(predictor.predict_proba(rgb), dtype=np.float32)
                    ema = prob if ema is None else smooth * ema + (1.0 - smooth) * prob
                    mask = postprocess_mask(np.clip(ema, 0.0, 1.0), rgb.shape[:2], image=rgb, **postprocess)
                    result = av.VideoFrame.from_ndarray(recolor_hair(rgb, mask, color, strength), format="rgb24")
                    for packet in stream_out.encode(result):
                        sink.mux(packet)
                    frames += 1
            except av.FFmpegError as err:
                raise DataError(f"cannot decode video {video} (frame {frames}): {err}") from err
            for packet in stream_out.encode():
                sink.mux(packet)
        if frames == 0:
            out.unlink(missing_ok=True)
            raise DataError(f"{video}: no frame could be decoded")
    finally:
        source.close()
    seconds = time.perf_counter() - start
    return {"frames": frames, "fps": float(rate), "seconds": round(seconds, 2),
            "frames_per_s": round(frames / seconds, 2), "size": [int(stream_out.width), int(stream_out.height)]}


def build_parser() -> argparse.ArgumentParser:
    """The ``hairseg-predict`` argument parser."""
    p = ArgumentParser(prog="hairseg-predict", description=__doc__.splitlines()[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help=f"photo files, or one video ({', '.join(VIDEO_SUFFIXES)})")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder for photos; output video file for a video (e.g. out.mp4)")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint, TorchScript, ONNX or MediaPipe .tflite file "
                        "(default: $HAIRSEG_MODEL or newest $HAIRSEG_REGISTRY entry)")
    p.add_argument("--hair-class", type=int, default=None,
                   help="MediaPipe models: category index of hair (default: the class labelled hair, else the last)")
    p.add_argument("--mask", type=Path, nargs="+", default=None, metavar="MASK",
                   help="use these mask files (one per IMAGE; PNG 0..255 or PBM) instead of a model")
    p.add_argument("--color", default="copper",
                   help=f"hair colour: {', '.join(HAIR_COLORS)} (any case) or a hex colour like '#b08d57'")
    p.add_argument("--strength", type=float, default=1.0, help="recolour strength in [0, 1]")
    p.add_argument("--palette-sheet", type=Path, default=None, metavar="OUT.png",
                   help="write a contact sheet of the (one) photo in all 10 palette colours, named")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="probability that defines the mask the anti-bleed guard band grows from, in (0, 1)")
    p.add_argument("--feather-px", type=float, default=None,
                   help="guided-filter radius at the hair edge, px (default: 0.6%% of the photo's long side)")
    p.add_argument("--guard-px", type=int, default=None,
                   help="anti-bleed guard band around the mask, px (default: 1%% of the photo's long side)")
    p.add_argument("--smooth", type=float, default=0.6,
                   help="video: weight of previous frames in the mask's moving average, in [0, 1)")
    p.add_argument("--max-frames", type=int, default=None, help="video: stop after N frames (default: all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="mlcore checkpoints: bf16 weights and inputs (fast on CPUs with AMX / AVX512_BF16; check "
                        "the IoU: bench/hairseg_latency.py)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``hairseg-predict`` (0 ok, 1 missing/unreadable input or model, 2 bad flags)."""
    from mlcore.checkpoint import CheckpointError
    from mlcore.cli import run_cli
    from mlcore.config import ConfigError

    def run() -> int:
        args = build_parser().parse_args(argv)
        try:
            resolve_color(args.color)
        except ValueError as exc:
            raise ConfigError(f"--color: {exc}") from exc
        if not 0.0 <= args.strength <= 1.0:
            raise ConfigError(f"--strength must be in [0, 1] (got {args.strength})")
        if not 0.0 < args.threshold < 1.0:
            raise ConfigError(f"--threshold must be in (0, 1) (got {args.threshold})")
        if (args.feather_px is not None and args.feather_px < 0) or (args.guard_px is not None and args.guard_px < 0):
            raise ConfigError(f"--feather-px and --guard-px must be >= 0 (got {args.feather_px}, {args.guard_px})")
        if not 0.0 <= args.smooth < 1.0:
            raise ConfigError(f"--smooth must be in [0, 1) (got {args.smooth})")
        if args.max_frames is not None and args.max_frames < 1:
            raise ConfigError(f"--max-frames must be >= 1 (got {args.max_frames})")
        if args.hair_class is not None and args.hair_class < 0:
            raise ConfigError(f"--hair-class must be >= 0 (got {args.hair_class})")
        if args.out is None and args.palette_sheet is None:
            raise ConfigError("--out DIR (or --out VIDEO.mp4 for a video) or --palette-sheet OUT.png is required")
        videos = [p for p in args.images if p.suffix.lower() in VIDEO_SUFFIXES]
        if videos and (len(args.images) > 1 or args.mask or args.palette_sheet):
            raise ConfigError("a video is processed alone: one VIDEO, --out OUT.mp4, no --mask or --palette-sheet")
        if videos and (args.out is None or args.out.suffix.lower() not in VIDEO_SUFFIXES):
            raise ConfigError(f"--out must be a video file ({', '.join(VIDEO_SUFFIXES)}) for a video input "
                              f"(got {args.out})")
        if args.mask is not None and len(args.mask) != len(args.images):
            raise ConfigError(f"--mask: {len(args.mask)} mask file(s) for {len(args.images)} image(s); give one per IMAGE")
        if args.palette_sheet is not None and len(args.images) != 1:
            raise ConfigError("--palette-sheet takes exactly one IMAGE")
        stems: dict[str, Path] = {}
        for image in [*args.images, *(args.mask or [])]:
            if not image.is_file():
                raise FileNotFoundError(f"{'mask' if image in (args.mask or []) else 'image'} not found: {image}")
        for image in args.images:
            if image.stem in stems:
                raise ConfigError(f"{stems[image.stem]} and {image} would write the same outputs ({image.stem}_*.png)")
            stems[image.stem] = image
        post = dict(threshold=args.threshold, feather_px=args.feather_px, guard_px=args.guard_px)
        predictor, model = None, None
        if args.mask is None:
            model = args.model if args.model is not None else default_model_path()
            predictor = load_predictor(model, device=args.device, hair_class=args.hair_class,
                                       precision=args.precision)
        summary: dict[str, Any] = {"model": str(model) if model else None,
                                   "predictor": predictor.name if predictor else "mask files",
                                   "color": color_label(args.color)}
        try:
            if videos:
                summary.update(predict_video(videos[0], args.out, predictor, color=args.color,
                                             strength=args.strength, smooth=args.smooth,
                                             max_frames=args.max_frames, **post))
                summary["out"] = str(args.out)
            else:
                if args.out is not None:
                    written = predict_images(args.images, args.out, predictor, color=args.color,
                                             strength=args.strength, masks=args.mask, **post)
                    summary.update(images=len(written), out=str(args.out))
                if args.palette_sheet is not None:
                    image = load_image(args.images[0])
                    prob = (load_alpha_file(args.mask[0], image.shape[:2]) if args.mask is not None
                            else predictor.predict_proba(image))
                    alpha = postprocess_mask(np.asarray(prob, np.float32), image.shape[:2], image=image, **post)
                    args.palette_sheet.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(palette_sheet(image, alpha, strength=args.strength)).save(args.palette_sheet)
                    summary["palette_sheet"] = str(args.palette_sheet)
        finally:
            getattr(predictor, "close", lambda: None)()
        print(json.dumps(summary))
        return 0

    return run_cli(run, prog="hairseg-predict",
                   user_errors=(DataError, ModelFormatError, ModelNotConfiguredError, RegistryError, CheckpointError,
                                ValueError))


if __name__ == "__main__":
    raise SystemExit(main())

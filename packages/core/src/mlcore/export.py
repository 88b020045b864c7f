"""ONNX export shared by every domain's ``<domain>-export``: graph, metadata, parity.

One place for what hairseg, foodrec and plantid did each on their own:

- :func:`export_onnx`: ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``), named
  inputs/outputs, a dynamic batch axis on each, an opset >= 13, the exporter's deprecation and tracer
  notes silenced, then ``metadata`` written into the model's ``metadata_props``.
- :func:`write_onnx_metadata` / :func:`read_onnx_metadata` / :func:`copy_onnx_metadata`: the metadata
  convention (one prop per key, the value JSON-encoded: ``"384"``, ``"[0.485, 0.456, 0.406]"``), so a
  reader gets back the numbers, lists and dicts that were written.
- :func:`onnx_parity`: eager PyTorch against ONNX Runtime (CPU provider) on the same inputs, max abs
  difference of one output, shapes checked.

Needs ``onnx`` and ``onnxruntime``, which the exporting domains install (``import mlcore`` does not import
this module). See https://pytorch.org/docs/stable/onnx_torchscript.html and
https://onnx.ai/onnx/api/classes.html#metadata-props for the APIs used.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

MIN_OPSET = 13
"""The lowest ONNX opset the exporters accept (``Split``/``Squeeze`` with tensor inputs, what timm and smp
models need)."""


@contextmanager
def quiet_export_warnings() -> Iterator[None]:
    """Silence the notes every legacy ONNX export and TorchScript call prints on torch >= 2.9: the
    ``DeprecationWarning``/``FutureWarning`` that the TorchScript-based exporter and ``torch.jit`` are
    deprecated, and ``TracerWarning`` (Python values turned into constants while tracing)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def write_onnx_metadata(path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Replace the ``metadata_props`` of the ONNX file at ``path`` with ``metadata``, each value JSON-encoded
    (``json.dumps``), and save the file in place.

    Raises:
        TypeError: a value ``json.dumps`` cannot encode.
    """
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), json.dumps(value)
    onnx.save(proto, str(path))


def read_onnx_metadata(model: Any) -> dict[str, Any]:
    """``metadata_props`` of an ONNX file path, an ``onnx.ModelProto`` or an ``onnxruntime.InferenceSession``
    as a dict. Values written by :func:`write_onnx_metadata` are JSON and are decoded; other strings are
    returned as they are."""
    if isinstance(model, str | Path):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    if hasattr(model, "get_modelmeta"):
        props = dict(model.get_modelmeta().custom_metadata_map)
    else:
        props = {p.key: p.value for p in model.metadata_props}
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def copy_onnx_metadata(source: str | Path, target: str | Path) -> None:
    """Replace the ``metadata_props`` of the ONNX file ``target`` with those of ``source`` (verbatim), e.g.
    after quantisation, which drops them."""
    import onnx

    src, dst = onnx.load(str(source), load_external_data=False), onnx.load(str(target))
    del dst.metadata_props[:]
    for prop in src.metadata_props:
        entry = dst.metadata_props.add()
        entry.key, entry.value = prop.key, prop.value
    onnx.save(dst, str(target))


def export_onnx(model: torch.nn.Module, path: str | Path, example: torch.Tensor, *,
                metadata: Mapping[str, Any] | None = None, opset: int = 17, input_name: str = "image",
                output_names: Sequence[str] = ("logits",)) -> None:
    """Export ``model`` (put in eval mode) to ONNX at ``path``.

    The graph is traced on ``example`` (e.g. ``(1, 3, S, S)`` float32) by ``torch.onnx.export(dynamo=False)``
    with input ``input_name`` and outputs ``output_names`` (one per tensor ``model`` returns, in order);
    axis 0 of each is dynamic (``"batch"``), the other axes are fixed to the example's. ``metadata``, if
    given, goes into ``metadata_props`` (:func:`write_onnx_metadata`).

    Raises:
        ValueError: ``opset`` < :data:`MIN_OPSET`.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset: expected >= {MIN_OPSET}, got {opset}")
    names = [input_name, *output_names]
    with quiet_export_warnings(), torch.no_grad():
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=list(output_names),
                          dynamic_axes={name: {0: "batch"} for name in names})
    if metadata is not None:
        write_onnx_metadata(path, metadata)


def onnx_parity(model: torch.nn.Module, onnx_model: Any, inputs: Sequence[torch.Tensor | np.ndarray], *,
                input_name: str = "image", output: str = "logits", output_index: int = 0) -> float:
    """Max abs difference between eager ``model`` and ONNX Runtime on each of ``inputs`` (each a whole
    batch, e.g. ``x[:1]`` and ``x[:2]`` to check the dynamic batch axis): ``model(x)`` (its
    ``output_index``-th tensor when it returns a tuple) against the ONNX output named ``output``.

    ``onnx_model``: a file path or an ``onnxruntime.InferenceSession`` (a path gets a CPU session).
    Both sides are compared in float32.

    Raises:
        RuntimeError: an ONNX output whose shape differs from PyTorch's (names the batch size).
    """
    if isinstance(onnx_model, str | Path):
        import onnxruntime as ort

        onnx_model = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    diff = 0.0
    model = model.eval()
    with torch.no_grad():
        for batch in inputs:
            x = torch.as_tensor(np.asarray(batch, dtype=np.float32)) if isinstance(batch, np.ndarray) else batch
            ref = model(x)
            if isinstance(ref, tuple | list):
                ref = ref[output_index]
            ref = ref.float().numpy()
            got = onnx_model.run([output], {input_name: x.float().numpy()})[0]
            if got.shape != ref.shape:
                raise RuntimeError(f"ONNX output {output!r} shape {got.shape} != PyTorch {ref.shape} "
                                   f"at batch {len(x)}")
            diff = max(diff, float(np.abs(got.astype(np.float32) - ref).max()))
    return diff

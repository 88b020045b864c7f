"""mlcore.export: the ONNX export, metadata and parity helpers shared by hairseg, foodrec and plantid."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mlcore.export import (
    copy_onnx_metadata,
    export_onnx,
    onnx_parity,
    read_onnx_metadata,
    write_onnx_metadata,
)

META = {"preprocessing": {"input_size": [3, 8, 8], "mean": [0.485, 0.456, 0.406], "interpolation": "bicubic"},
        "classes": ["a", "b"], "image_size": 8, "std": [0.229, 0.224, 0.225], "checkpoint": None}


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.conv(x)
        return logits, torch.sigmoid(logits)


def test_metadata_round_trips_and_parity_with_onnxruntime(tmp_path):
    model, path = TwoHeads(), tmp_path / "m.onnx"
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    export_onnx(model, path, x[:1], metadata=META, opset=17, output_names=("logits", "mask"))

    proto = onnx.load(str(path))
    assert {p.key for p in proto.metadata_props} == set(META)
    assert read_onnx_metadata(proto) == META  # values JSON-encoded, decoded back to lists/dicts/None
    assert read_onnx_metadata(path) == META
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert read_onnx_metadata(session) == META
    assert proto.opset_import[0].version == 17
    assert [o.name for o in session.get_outputs()] == ["logits", "mask"]

    # the batch axis is dynamic: batch 3 runs although the graph was traced at 1; reference: eager torch
    got = session.run(["logits", "mask"], {"image": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    np.testing.assert_allclose(got[0], ref[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1].numpy(), atol=1e-5)
    assert onnx_parity(model, path, (x[:1], x[:3])) < 1e-5
    assert onnx_parity(model, session, (x[:2].numpy(),), output="mask", output_index=1) < 1e-5

    # a model that differs from the exported one is caught by the parity check
    other = TwoHeads()
    with torch.no_grad():
        other.conv.bias += 0.5
    assert onnx_parity(other, session, (x[:2],)) == pytest.approx(0.5, abs=1e-5)


def test_metadata_is_replaced_copied_and_plain_strings_kept(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    model = torch.nn.Conv2d(3, 1, 1)
    export_onnx(model, a, torch.zeros(1, 3, 4, 4), metadata={"old": 1})
    export_onnx(model, b, torch.zeros(1, 3, 4, 4))
    assert read_onnx_metadata(b) == {}
    write_onnx_metadata(a, {"version": "1.0", "size": 4})
    assert read_onnx_metadata(a) == {"version": "1.0", "size": 4}  # "old" gone: replaced, not merged
    copy_onnx_metadata(a, b)
    assert read_onnx_metadata(b) == {"version": "1.0", "size": 4}
    proto = onnx.load(str(b))  # a prop another tool wrote as a bare string reads back as that string
    proto.metadata_props.add(key="author", value="not json")
    onnx.save(proto, str(b))
    assert read_onnx_metadata(b)["author"] == "not json"


def test_opset_below_13_is_refused(tmp_path):
    with pytest.raises(ValueError, match="opset: expected >= 13, got 11"):
        export_onnx(torch.nn.Identity(), tmp_path / "x.onnx", torch.zeros(1, 3, 2, 2), opset=11)
    assert not (tmp_path / "x.onnx").exists()

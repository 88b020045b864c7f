"""Device strategies, seeding, profiling, environment setup and package isolation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import mlcore
from mlcore.config import ConfigError, TrainConfig
from mlcore.devices import CPUStrategy, CUDAStrategy, build_strategy, resolve_device, split_batch
from mlcore.seed import sample_seed, seed_everything


def test_auto_picks_best_available():
    want = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto") == want
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"--device cuda: CUDA is not available .*present here: auto, cpu"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match=r"--device cuda:1: CUDA is not available"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match=r"--device tpu: expected one of auto, cpu, cuda\[:N\], mps \(present here"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="expected one of"):
        resolve_device("cpu:0")
    assert resolve_device(" CPU ") == "cpu"


def test_cpu_precision():
    s = CPUStrategy("auto")
    assert s.precision == "fp32" and s.autocast_dtype is None and not s.make_scaler().is_enabled()
    s = CPUStrategy("bf16")
    with s.autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="--precision fp16 is not supported on cpu"):
        CPUStrategy("fp16")


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
def test_cuda_strategy_precision_table():
    # constructing does not touch the GPU; fp16 gets a GradScaler, bf16 does not
    assert CUDAStrategy("fp16").make_scaler().is_enabled() == torch.cuda.is_available()
    assert CUDAStrategy("bf16").autocast_dtype == torch.bfloat16
    assert not CUDAStrategy("bf16").make_scaler().is_enabled()


def test_channels_last_batches():
    s = CPUStrategy("fp32", channels_last=True)
    x = s.to_device({"image": torch.randn(2, 3, 8, 8), "label": torch.tensor([1, 2])})
    assert x["image"].is_contiguous(memory_format=torch.channels_last)
    m = s.prepare_model(torch.nn.Conv2d(3, 4, 3))
    assert m.weight.is_contiguous(memory_format=torch.channels_last)


def test_split_batch_halves():
    b = {"x": torch.arange(7), "names": list("abcdefg"), "meta": torch.tensor(1.0)}
    parts = split_batch(b, 2)
    assert [p["x"].tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6]]
    assert parts[1]["names"] == ["e", "f", "g"] and parts[1]["meta"].item() == 1.0
    assert len(split_batch({"x": torch.arange(2)}, 4)) == 2


def test_oom_detection():
    s = build_strategy("cpu")
    assert s.is_oom(torch.OutOfMemoryError("x"))
    assert s.is_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not s.is_oom(RuntimeError("shape mismatch"))


def test_mps_environment_is_set_before_torch(monkeypatch):
    for k in mlcore.MPS_ENV_DEFAULTS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PYTORCH_MPS_HIGH_WATERMARK_RATIO", "0.5")  # a user's choice wins
    applied = mlcore.configure_environment("darwin")
    assert os.environ["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] == "0.5"
    assert applied == {k: v for k, v in mlcore.MPS_ENV_DEFAULTS.items() if k != "PYTORCH_MPS_HIGH_WATERMARK_RATIO"}
    assert mlcore.configure_environment("linux") == {}
    # in a fresh interpreter, mlcore has configured the environment by the time torch is imported
    code = """
import sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            m = sys.modules.get("mlcore")
            seen.append(bool(m and m.ENVIRONMENT_CONFIGURED))
        return None
sys.meta_path.insert(0, Spy())
import mlcore
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[True]"


def test_seed_everything_and_sample_seed():
    seed_everything(3)
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    seed_everything(3)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    seeds = {sample_seed(0, e, i) for e in range(3) for i in range(100)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)


def test_deterministic_flag(toy):
    trainer, train, _ = toy(epochs=1, deterministic=True)
    try:
        assert torch.are_deterministic_algorithms_enabled()
        trainer.fit(train)
    finally:
        torch.use_deterministic_algorithms(False)


def test_profile_writes_trace_and_table(toy, capsys):
    trainer, train, _ = toy(epochs=1, profile=True)
    trainer.fit(train)
    prof = trainer.run_dir / "profile"
    assert list(prof.glob("*.pt.trace.json")), list(prof.iterdir())
    table = (prof / "top_ops.txt").read_text()
    assert "Self CPU" in table and "aten::" in table
    assert "aten::" in capsys.readouterr().out
    ops = json.loads((prof / "top_ops.json").read_text())
    assert ops["profiled_steps"] == 3
    rows = ops["ops"]
    assert any(r["name"] == "aten::addmm" and r["input_shapes"].startswith("[[") for r in rows), rows[:3]
    assert [r["self_cpu_us"] for r in rows] == sorted((r["self_cpu_us"] for r in rows), reverse=True)
    assert all(r["cpu_total_us"] >= r["self_cpu_us"] >= 0 and r["count"] >= 1 for r in rows)
    summary = json.loads((trainer.run_dir / "summary.json").read_text())
    assert summary["samples_per_s"] > 0


def test_profile_steps_sets_the_recorded_steps(toy):
    # 40 samples / batch 4 = 10 steps: wait 1 + warmup 1 + active 2 records ProfilerStep#2 and #3 only
    trainer, train, _ = toy(epochs=1, profile=True, profile_steps=2)
    trainer.fit(train)
    trace = next((trainer.run_dir / "profile").glob("*.pt.trace.json")).read_text()
    assert "ProfilerStep#2" in trace and "ProfilerStep#3" in trace
    assert "ProfilerStep#4" not in trace
    with pytest.raises(ConfigError, match="--profile-steps"):
        TrainConfig(profile_steps=0).validate()


def test_compile_option_trains_compiled_model(toy, params_of):
    trainer, train, _ = toy(epochs=1, compile=True, max_steps=2)
    assert hasattr(trainer.model, "_orig_mod")
    before = params_of(trainer)
    summary = trainer.fit(train)  # inductor on CPU (gcc): compiles forward and backward once
    assert summary["steps"] == 2
    after = params_of(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_mps_strategy_hygiene(monkeypatch):
    from mlcore.devices import MPSStrategy

    calls = []
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: calls.append(1))
    s = MPSStrategy("fp16")  # constructing does not touch the device
    assert s.metric_device == torch.device("cpu")  # metrics leave the GPU at once
    assert s.autocast_dtype == torch.float16
    for step in range(1, 101):
        s.after_step(step)
    assert len(calls) == 2  # every 50 optimizer updates by default
    s = MPSStrategy("fp32", empty_cache_every=10)
    calls.clear()
    for step in range(1, 31):
        s.after_step(step)
    assert len(calls) == 3


def test_cuda_setup_settings(monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: None)
    seen = []
    monkeypatch.setattr(torch.cuda.memory, "_set_allocator_settings", lambda v: seen.append(v))
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = False
    try:
        CUDAStrategy("bf16").setup()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
        assert seen == ["expandable_segments:True"]
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def test_metric_reset_keeps_device():
    from mlcore.testing import Accuracy

    m = Accuracy().to("meta")
    m.reset()
    assert m.correct.device.type == "meta"

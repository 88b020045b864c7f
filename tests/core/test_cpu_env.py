"""CPU defaults of issue 17: OpenMP environment before torch starts, bf16 detection for --precision auto."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlcore import devices
from mlcore.devices import CPUStrategy, cpu_native_bf16

REPO = Path(__file__).resolve().parents[2]
_PROBE = ("import os, sys, json; import {module}; import mlcore, torch; "
          "print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OMP_NUM_THREADS'), "
          "mlcore.TORCH_IMPORTED_FIRST, torch.get_num_threads()]))")


def _probe(module: str, **env: str) -> list:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _PROBE.format(module=module)], env={**clean, **env},
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_entry_point_sets_openmp_env_before_torch():
    policy, threads, torch_first, torch_threads = _probe("plantid.train")
    assert policy == "PASSIVE" and threads == str(len(os.sched_getaffinity(0)))
    assert torch_first is False and torch_threads == len(os.sched_getaffinity(0))


def test_user_values_are_kept():
    policy, threads, _, torch_threads = _probe("roofseg.train", OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert (policy, threads, torch_threads) == ("ACTIVE", "1", 1)


@pytest.mark.parametrize("package", ["foodrec", "hairseg", "plantid", "roofseg", "videogen"])
def test_every_domain_imports_mlcore_first(package):
    init = (REPO / "packages" / package / "src" / package / "__init__.py").read_text()
    assert "import mlcore" in init and "import torch" not in init.split("import mlcore")[0]


def test_detection_matches_cpuinfo():
    flags = set()
    if Path("/proc/cpuinfo").is_file():
        flags = set(next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), []))
    expected = ("AMX" if "amx_bf16" in flags else "AVX512_BF16" if "avx512_bf16" in flags else None)
    if "AVX512" not in torch.backends.cpu.get_cpu_capability():
        expected = None
    assert cpu_native_bf16() == expected


def test_auto_precision_on_cpu(monkeypatch, caplog):
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: "AMX")
    with caplog.at_level(logging.INFO, logger="mlcore.devices"):
        s = CPUStrategy("auto")
    assert s.precision == "fp32" and "native bf16 (AMX)" in caplog.text  # off until quality is checked
    monkeypatch.setattr(devices, "CPU_AUTO_BF16", True)
    s = CPUStrategy("auto")
    assert s.precision == "bf16" and s.autocast_dtype is torch.bfloat16
    model = s.prepare_model(conv)
    assert s.channels_last and model[0].weight.dtype == torch.float32  # fp32 master weights
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    lin = CPUStrategy("auto")
    lin.prepare_model(torch.nn.Linear(3, 2))
    assert not lin.channels_last
    assert CPUStrategy("fp32").precision == "fp32"
    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: None)
    assert CPUStrategy("auto").precision == "fp32"

"""bench/plantid_speed.py: the profile-table helpers (closed forms) and its one-line flag errors."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "plantid_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("plantid_speed_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(name, self_us, total_us=None, shapes=""):
    return {"name": name, "input_shapes": shapes, "count": 1, "self_cpu_us": float(self_us),
            "cpu_total_us": float(self_us if total_us is None else total_us), "self_device_us": 0.0}


def test_per_sample_ms_sums_shape_groups_and_divides_by_samples(bench):
    rows = [_row("aten::addmm", 6000, shapes="[[1]]"), _row("aten::addmm", 2000, shapes="[[2]]"),
            _row("aten::gelu", 16000)]
    # 8000 us / 1000 / 4 samples = 2 ms/sample; 16000 us -> 4 ms/sample; largest first
    assert bench.per_sample_ms(rows, 4) == {"aten::gelu": 4.0, "aten::addmm": 2.0}
    assert list(bench.per_sample_ms(rows, 4)) == ["aten::gelu", "aten::addmm"]
    gpu = [{**_row("k", 0), "self_device_us": 3000.0}]  # a CUDA run compares kernel time
    assert bench.per_sample_ms(gpu, 2, key="self_device_us") == {"k": 1.5}
    with pytest.raises(ValueError, match="samples"):
        bench.per_sample_ms(rows, 0)


def test_compare_ops_ratios_and_shares_of_the_difference(bench):
    a = {"gelu": 4.0, "addmm": 2.0, "sum": 1.0, "tiny": 0.5}
    b = {"gelu": 1.0, "addmm": 2.0, "sum": 2.0, "new": 0.5}
    rows = {r["name"]: r for r in bench.compare_ops(a, b, top=3)}
    # totals 7.5 vs 5.5: difference 2; gelu saves 3 of it (150%), sum costs 1 more (-50%), addmm 0
    assert rows["gelu"]["ratio"] == 0.25 and rows["gelu"]["diff_share"] == 1.5
    assert rows["addmm"]["ratio"] == 1.0 and rows["addmm"]["diff_share"] == 0.0
    assert rows["sum"]["ratio"] == 2.0 and rows["sum"]["diff_share"] == -0.5
    other = rows["(all other ops)"]  # tiny (0.5 vs 0) and new (0 vs 0.5)
    assert (other["a"], other["b"], other["ratio"], other["diff_share"]) == (0.5, 0.5, 1.0, 0.0)
    assert (rows["total"]["a"], rows["total"]["b"], rows["total"]["diff_share"]) == (7.5, 5.5, 1.0)
    body = [r for r in bench.compare_ops(a, b, top=3) if r["name"] != "total"]
    assert sum(r["a"] for r in body) == 7.5 and sum(r["b"] for r in body) == 5.5
    assert sum(r["diff_share"] for r in body) == pytest.approx(1.0)
    only_b = {r["name"]: r for r in bench.compare_ops({"x": 1.0}, {"x": 1.0, "y": 1.0}, top=5)}
    assert only_b["y"]["ratio"] == math.inf
    assert math.isnan(bench.compare_ops({"x": 1.0}, {"x": 1.0})[0]["diff_share"])  # equal totals


def test_profile_shares_wall_data_wait_and_optimizer_per_update(bench):
    rows = [_row("ProfilerStep*", 100, total_us=40000),
            _row("enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__", 10000),
            _row("Optimizer.step#AdamW.step", 500, total_us=6000), _row("Optimizer.zero_grad#AdamW.zero_grad", 200),
            _row("aten::addmm", 20000)]
    shares = bench.profile_shares(rows, updates=2)
    assert shares["wall_ms"] == 40.0
    assert shares["data_wait_share"] == 0.25
    assert shares["optimizer_ms_per_update"] == 3.1  # (6000 + 200) us / 1000 / 2 updates
    no_steps = bench.profile_shares([_row("aten::addmm", 3000), _row("enumerate(DataLoader)#x", 1000)], 1)
    assert no_steps["wall_ms"] == 4.0 and no_steps["data_wait_share"] == 0.25


def test_top_shape_and_scaled(bench):
    rows = [_row("aten::bmm", 300, shapes="[[96, 82, 64]]"), _row("aten::bmm", 100, shapes="[[48, 82, 64]]")]
    assert bench.top_shape(rows, "aten::bmm") == ("[[96, 82, 64]]", 0.75)
    assert bench.top_shape(rows, "aten::mm") == ("", 0.0)
    assert (bench.scaled(518, 0.25), bench.scaled(448, 0.25), bench.scaled(518, 0.01)) == (126, 112, 14)


@pytest.mark.parametrize("argv, expected", [(["--steps", "0"], "--steps must be >= 1"),
                                            (["--size-scale", "0"], "--size-scale must be > 0"),
                                            (["--data", "/nonexistent/flowers"], "/nonexistent/flowers")])
def test_bad_flags_are_one_line_without_training(bench, argv, expected, capsys):
    assert bench.main(argv) in (1, 2)
    err = capsys.readouterr().err.strip()
    assert expected in err and "Traceback" not in err and len(err.splitlines()) == 1

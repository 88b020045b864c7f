import math

import pytest
import torch

from mlcore.schedulers import build_scheduler, lr_factor, total_optimizer_steps


def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_total_steps_formula():
    assert total_optimizer_steps(10, 3, 2) == math.ceil(10 / 3) * 2 == 8
    assert total_optimizer_steps(9, 3, 1) == 3
    with pytest.raises(ValueError):
        total_optimizer_steps(0, 1, 1)


def test_warmup_then_cosine_matches_closed_form():
    base, min_lr, warm, total, f0 = 0.1, 0.001, 5, 25, 0.1
    opt = _opt(base)
    sched = build_scheduler(opt, name="cosine", total_steps=total, warmup_steps=warm,
                            warmup_start_factor=f0, min_lr=min_lr)
    got = _lrs(sched, opt, total + 3)
    for s, lr in enumerate(got):
        if s < warm:
            want = base * (f0 + (1 - f0) * s / warm)
        else:
            t = min(1.0, (s - warm) / (total - warm))
            want = min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        assert lr == pytest.approx(want, rel=1e-12, abs=1e-15), s
    assert got[warm] == pytest.approx(base)
    assert got[total] == pytest.approx(min_lr)
    assert got[-1] == pytest.approx(min_lr)  # clamped after the end


def test_constant_and_step():
    opt = _opt(0.5)
    got = _lrs(build_scheduler(opt, name="constant", total_steps=10, warmup_steps=2), opt, 6)
    assert got == pytest.approx([0.0, 0.25, 0.5, 0.5, 0.5, 0.5])
    opt = _opt(1.0)
    got = _lrs(build_scheduler(opt, name="step", total_steps=10, step_size=3, gamma=0.5), opt, 7)
    assert got == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25])


def test_min_lr_is_per_group_absolute():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.1}], lr=1.0)
    sched = build_scheduler(opt, name="cosine", total_steps=4, min_lr=0.01)
    for _ in range(4):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.01])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown scheduler"):
        build_scheduler(_opt(), name="poly", total_steps=3)
    with pytest.raises(ValueError, match="warmup"):
        build_scheduler(_opt(), name="cosine", total_steps=3, warmup_start_factor=2.0)
    assert lr_factor(0, name="cosine", total_steps=1) == 1.0

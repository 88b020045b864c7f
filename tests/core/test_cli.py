"""CLI and config: flags from the dataclass, presets, precedence, one-line errors with exit code 2."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from mlcore.cli import build_parser, parse_config, run_cli
from mlcore.config import ConfigError, TrainConfig, opt


@dataclasses.dataclass
class DemoConfig(TrainConfig):
    encoder: str = opt("small", "backbone", choices=("small", "large"))
    pos_weight: float | None = opt(None, "positive-class weight")


@pytest.fixture
def presets(tmp_path, monkeypatch):
    pkg = tmp_path / "demo_presets_pkg"
    (pkg / "configs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "configs" / "fast.yaml").write_text("epochs: 3\nlr: 0.01\nencoder: large\n")
    (pkg / "configs" / "broken.yaml").write_text("epochs: 3\nnot_an_option: 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("demo_presets_pkg", None)
    return "demo_presets_pkg"


def _parse(argv, presets=None):
    return parse_config(DemoConfig, argv, prog="demo-train", presets_package=presets)


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(DemoConfig):
        assert f"--{f.name.replace('_', '-')}" in text, f.name
    assert "(default: 0.001)" in text and "(default: small)" in text


def test_precedence_defaults_preset_flags(presets):
    cfg = _parse([], presets)
    assert cfg.epochs == 10 and cfg.encoder == "small"
    cfg = _parse(["--config", "fast"], presets)
    assert (cfg.epochs, cfg.lr, cfg.encoder) == (3, 0.01, "large")
    cfg = _parse(["--config", "fast", "--lr", "0.5", "--no-pretrained", "--pos-weight", "2"], presets)
    assert (cfg.epochs, cfg.lr, cfg.pretrained, cfg.pos_weight) == (3, 0.5, False, 2.0)
    cfg = _parse(["--max-steps", "none", "--clip-grad-norm", "none"], presets)
    assert cfg.max_steps is None and cfg.clip_grad_norm is None


def test_preset_from_yaml_file(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("batch_size: 7\n")
    assert _parse(["--config", str(f)]).batch_size == 7


@pytest.mark.parametrize("argv,needle", [
    (["--lr", "-1"], "--lr must be > 0"),
    (["--data", "/definitely/not/here"], "--data /definitely/not/here: folder not found"),
    (["--config", "nope"], "unknown preset 'nope'"),
    (["--config", "broken"], "unknown option 'not_an_option'"),
    (["--accum-steps", "0"], "--accum-steps must be >= 1"),
    (["--resume", "/no/run"], "no checkpoint found"),
])
def test_bad_values_raise_config_error(presets, argv, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        _parse(argv, presets)


def test_run_cli_exit_code_2_and_one_line(presets, capsys):
    code = run_cli(lambda: _parse(["--lr", "-1"], presets), prog="demo-train")
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "demo-train: error: --lr must be > 0 (got -1.0)"
    assert "Traceback" not in err


def test_unparsable_flag_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(["--epochs", "many"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epochs" in err[0]
    with pytest.raises(SystemExit):
        _parse(["--encoder", "huge"])


def test_resume_uses_saved_config_and_flags_override(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}}, run / "checkpoints" / "last.pt")  # --resume checks the file before any work
    (run / "config.yaml").write_text("epochs: 4\nbatch_size: 6\nencoder: large\n")
    cfg = _parse(["--resume", str(run), "--epochs", "8"])
    assert (cfg.epochs, cfg.batch_size, cfg.encoder, cfg.resume) == (8, 6, "large", str(run))


def test_parser_types():
    p = build_parser(DemoConfig, "demo")
    ns = p.parse_args(["--warmup-epochs", "0.5", "--deterministic"])
    assert ns.warmup_epochs == 0.5 and ns.deterministic is True


def test_preset_values_are_converted_and_checked(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("lr: 1e-4\nepochs: 3\nwarmup_epochs: 1\n")  # YAML reads 1e-4 as a string, 1 as an int
    cfg = _parse(["--config", str(f)])
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float) and cfg.warmup_epochs == 1.0
    f.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="epochs: expected int, got 'many'"):
        _parse(["--config", str(f)])
    f.write_text("compile: 1\n")
    with pytest.raises(ConfigError, match="compile: expected true or false"):
        _parse(["--config", str(f)])


def test_best_monitors():
    cfg = _parse(["--monitor", "val_iou", "--monitor-mode", "max", "--best-monitors", "val_loss:min, val_f1:max"])
    assert cfg.best_monitor_list() == [("val_iou", "max"), ("val_loss", "min"), ("val_f1", "max")]
    with pytest.raises(ConfigError, match="--best-monitors"):
        _parse(["--best-monitors", "val_loss"])


def test_flag_aliases():
    from dataclasses import dataclass

    from mlcore.config import opt

    @dataclass
    class AliasConfig(TrainConfig):
        resume: str | None = opt(None, "resume from a run or checkpoint", aliases=("--checkpoint",))

    parser = build_parser(AliasConfig, "demo-train")
    assert vars(parser.parse_args(["--checkpoint", "runs/x"]))["resume"] == "runs/x"
    assert vars(parser.parse_args(["--resume", "runs/y"]))["resume"] == "runs/y"

"""Build every ``<domain>-train`` (and friends) from a config dataclass.

Precedence, lowest first: the dataclass defaults, a ``--config`` preset (a YAML shipped in the
domain package's ``configs/`` folder, or a YAML file path), the saved ``config.yaml`` of the run
given to ``--resume``, then flags typed on the command line. ``--help`` lists every option with its
default. Invalid values exit with code 2 and a one-line ``prog: error: ...`` message.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mlcore.checkpoint import (
    CheckpointError,
    UserInputError,
    config_domain,
    load_checkpoint,
    resolve_resume_path,
)
from mlcore.config import ConfigError, TrainConfig, flag
from mlcore.devices import DeviceError, check_device
from mlcore.runlog import setup_logging

C = TypeVar("C", bound=TrainConfig)


def _scalar_type(tp: Any) -> tuple[type, bool]:
    """(base type, optional) of a resolved annotation like ``int | None``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return tp, False


def _converter(base: type, optional: bool, name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null", ""):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}{' or none' if optional else ''}, got {text!r}") from None
    convert.__name__ = base.__name__
    return convert


def list_presets(package: str | None) -> list[str]:
    """Names of the YAML presets shipped in ``<package>/configs``."""
    if package is None:
        return []
    folder = resources.files(package).joinpath("configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def load_preset(name_or_path: str, package: str | None) -> dict[str, Any]:
    """Read a preset by name (shipped with ``package``) or from a YAML file path.

    Raises:
        ConfigError: unknown preset name, unreadable file or a file that is not a YAML mapping.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"--config {name_or_path}: file not found")
        text = path.read_text()
    else:
        presets = list_presets(package)
        if name_or_path not in presets:
            raise ConfigError(f"--config: unknown preset {name_or_path!r} (presets: {', '.join(presets) or 'none'})")
        text = resources.files(package).joinpath("configs", f"{name_or_path}.yaml").read_text()  # type: ignore[arg-type]
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {name_or_path}: {yaml_error_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {name_or_path}: expected a mapping of option: value")
    return data


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """One line for a YAML parse error: ``invalid YAML at line 3, column 7: mapping values are not
    allowed here`` (1-based line and column, from PyYAML's ``problem_mark``)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or exc.__class__.__name__
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {problem}"


def device_arg(text: str) -> str:
    """argparse ``type`` of every ``--device`` flag: :func:`mlcore.devices.check_device`, its one-line
    error (valid forms and the devices present) reported by argparse with exit code 2."""
    try:
        return check_device(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc).partition(": ")[2]) from None
device_arg.__name__ = "device"


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse ``type``: an int >= ``minimum`` (``--batch-size 0`` -> one line, exit 2)."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum} (got {value})")
        return value
    convert.__name__ = "int"
    return convert


# Flags whose meaning is the same in every command: the shared parser checks them itself, so a
# domain's ``add_argument("--batch-size", type=int)`` already rejects 0 in one line.
_INT_MINIMUM = {"batch_size": 1, "num_workers": 0, "torch_threads": 1}


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default once: appended as ``(default: X)`` unless the help text
    already states one, also for options without help text; suppressed defaults and flags
    (``--help``) are left alone."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if ("(default" in help_text or "%(default)" in help_text or action.default is argparse.SUPPRESS
                or action.required):
            return help_text
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            return help_text
        return f"{help_text} (default: %(default)s)".strip()


class ArgumentParser(argparse.ArgumentParser):
    """argparse for every command of the workspace: a bad flag is one line on stderr (no usage block)
    and exit code 2; ``--help`` shows every default (:class:`DefaultsHelpFormatter`); ``--device`` is
    checked by :func:`device_arg` and ``--batch-size`` / ``--num-workers`` by range, whatever
    ``type`` the command passed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        if kwargs["formatter_class"] in (argparse.HelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
            kwargs["formatter_class"] = DefaultsHelpFormatter
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        dest = kwargs.get("dest") or next((a.lstrip("-").replace("-", "_") for a in args if a.startswith("--")), None)
        if dest == "device" and kwargs.get("action") in (None, "store"):
            kwargs["type"] = device_arg
            kwargs.pop("choices", None)
            kwargs.setdefault("metavar", "DEVICE")
        elif dest in _INT_MINIMUM and kwargs.get("type") is int:
            kwargs["type"] = int_at_least(_INT_MINIMUM[dest])
            kwargs.setdefault("metavar", "INT")
        is_option = any(str(a).startswith("-") for a in args)
        if (is_option and not kwargs.get("help") and not kwargs.get("required")
                and kwargs.get("action") not in ("help", "version")):
            kwargs["help"] = "(default: %(default)s)"  # argparse skips the formatter for blank help
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(config_cls: type[C], prog: str, description: str = "", presets_package: str | None = None,
                 ) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with one flag per dataclass field plus ``--config``.

    Flags default to ``argparse.SUPPRESS`` so the parser reports only what was typed; the help
    text still shows each field's default.
    """
    presets = list_presets(presets_package)
    parser = ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="NAME_OR_YAML",
                        help=f"preset name ({', '.join(presets) or 'none shipped'}) or a YAML file; flags override it")
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        base, optional = _scalar_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        # one default per flag: a help text that states its own default keeps it
        shown = help_text if "(default" in help_text else f"{help_text} (default: {default})"
        kwargs: dict[str, Any] = {"help": shown.replace("%", "%%"), "dest": f.name}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name == "device":
            kwargs["type"] = device_arg
            kwargs["metavar"] = "DEVICE"
        else:
            kwargs["type"] = _converter(base, optional, f.name)
            kwargs["metavar"] = base.__name__.upper() if base is not str else "VALUE"
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
                kwargs.pop("metavar")
        parser.add_argument(f"--{flag(f.name)}", *f.metadata.get("aliases", ()), **kwargs)
    return parser


def _apply(config: C, values: dict[str, Any], source: str) -> C:
    """Set fields from a mapping (a preset, a saved config or parsed flags), converting types.

    Raises:
        ConfigError: an unknown option, or a value that does not convert to the field's type.
    """
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for key, value in values.items():
        k = key.replace("-", "_")
        if k not in names:
            raise ConfigError(f"{source}: unknown option {key!r}")
        base, optional = _scalar_type(hints[k])
        if value is None:
            if not optional:
                raise ConfigError(f"{source}: {key}: expected {base.__name__}, got none")
        elif base is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, base):
            # YAML reads 1e-4 as a string and 3 as an int where a float is meant
            try:
                if isinstance(value, bool):
                    raise TypeError
                value = base(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: {key}: expected {base.__name__}, got {value!r}") from None
        changes[k] = value
    return dataclasses.replace(config, **changes)


def parse_config(config_cls: type[C], argv: Sequence[str] | None = None, *, prog: str,
                 description: str = "", presets_package: str | None = None) -> C:
    """Parse flags into a validated ``config_cls`` instance.

    Raises:
        ConfigError: invalid value, unknown preset/option, or nothing to resume from.
        SystemExit: ``--help`` (code 0) or an unparsable flag (code 2, from argparse).
    """
    parser = build_parser(config_cls, prog, description, presets_package)
    args = vars(parser.parse_args(argv))
    preset = args.pop("config", None)
    config = config_cls()
    if preset is not None:
        config = _apply(config, load_preset(preset, presets_package), f"--config {preset}")
    if args.get("resume"):
        try:
            ckpt = resolve_resume_path(args["resume"])
        except CheckpointError as exc:
            # name the flag the user typed (an alias such as --checkpoint), not the field's own name
            raise ConfigError(str(exc).replace("--resume", _typed_flag(parser, "resume", argv), 1)) from exc
        if ckpt.is_file():  # an empty, truncated, unsafe or other-domain file: one line before any work
            load_checkpoint(ckpt, flag=_typed_flag(parser, "resume", argv), expect_domain=config_domain(config),
                            mmap=True)
        saved = ckpt.parent.parent / "config.yaml"
        if saved.is_file():
            # resume and max_steps are about one invocation (where to stop), not the run itself
            values = {k: v for k, v in (yaml.safe_load(saved.read_text()) or {}).items()
                      if k not in ("resume", "max_steps")}
            config = _apply(config, values, str(saved))
    config = _apply(config, args, "command line")
    config.validate()
    return config


def _typed_flag(parser: argparse.ArgumentParser, dest: str, argv: Sequence[str] | None) -> str:
    """The option string (of ``dest``'s, aliases included) that appears last in ``argv``; its first name if none."""
    action = next(a for a in parser._actions if a.dest == dest)
    typed = [a.split("=", 1)[0] for a in (sys.argv[1:] if argv is None else argv)]
    used = [t for t in typed if t in action.option_strings]
    return used[-1] if used else action.option_strings[0]


def run_cli(main: Callable[[], int | None], *, prog: str,
            user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``main`` turning user errors into one line on stderr and a non-zero exit code.

    ``ConfigError``, ``DeviceError`` and argparse errors exit 2 (bad flags or config); ``user_errors``
    (e.g. a domain's data error), ``FileNotFoundError``, every :class:`~mlcore.checkpoint.UserInputError`
    (``CheckpointError`` included) and a non-finite loss/gradient exit 1. A training run stopped by
    SIGINT/SIGTERM/SIGUSR1 (:class:`~mlcore.trainer.TrainingInterrupted`: last.pt saved) prints one line
    saying where last.pt is and how to resume, and exits 128 + the signal (130, 143); a second signal
    (:class:`~mlcore.trainer.TrainingAborted`) exits the same way at once. Only rank 0 prints these
    lines. Other exceptions propagate with their traceback (they are bugs).
    """
    from mlcore.trainer import NonFiniteLossError, TrainingAborted, TrainingInterrupted

    setup_logging(logging.INFO)
    try:
        return int(main() or 0)
    except (TrainingInterrupted, TrainingAborted) as exc:
        if os.environ.get("RANK", "0") == "0":  # torchrun's rank (the process group may be gone)
            print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except NonFiniteLossError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # argparse: --help (0) or a one-line flag error (2), already printed
        return exc.code if isinstance(exc.code, int) else 1
    except (ConfigError, DeviceError) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except (UserInputError, CheckpointError, FileNotFoundError, *user_errors) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1


def one_line(exc: BaseException) -> str:
    """An exception's message as one line: its first non-empty line (library errors such as
    torch's ``load_state_dict`` list one key per line), with `` (+N more lines)`` when cut. An exception
    re-raised from a ``DataLoader`` worker (whose message carries the worker's traceback) gives the
    original exception's own message instead."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if "Original Traceback" in str(exc):
        name = type(exc).__name__
        for prefix in (f"{type(exc).__module__}.{name}: ", f"{name}: "):
            if lines[-1].startswith(prefix):
                return lines[-1][len(prefix):]
        return lines[-1]
    return lines[0] + (f" (+{len(lines) - 1} more lines)" if len(lines) > 1 else "")


def train_main(config_cls: type[C], train: Callable[[C], dict[str, Any]], argv: Sequence[str] | None, *,
               prog: str, presets_package: str, description: str, summary_keys: Sequence[str],
               user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """The body of every ``<domain>-train``: parse flags into ``config_cls``, run ``train(cfg)``, print
    ``summary_keys`` of its summary as one JSON line (rank 0 only), release the process group.

    Returns the exit code of :func:`run_cli` (0 ok, 2 bad flags, 1 a ``user_errors`` failure).
    """
    import json

    from mlcore.distributed import destroy_distributed, is_main_process

    def run() -> int:
        cfg = parse_config(config_cls, argv, prog=prog, presets_package=presets_package, description=description)
        try:
            summary = train(cfg)
            if is_main_process():
                print(json.dumps({k: summary.get(k) for k in summary_keys}, default=str))
        finally:  # also when interrupted: release the process group
            destroy_distributed()
        return 0

    return run_cli(run, prog=prog, user_errors=user_errors)

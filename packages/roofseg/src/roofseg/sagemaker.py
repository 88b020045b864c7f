"""Run ``roofseg-train`` unchanged as a SageMaker PyTorch entry point.

SageMaker (training toolkit) sets ``SM_CHANNEL_TRAIN`` (the ``train`` input channel),
``SM_MODEL_DIR`` (uploaded as model.tar.gz), ``SM_OUTPUT_DATA_DIR`` (uploaded as output.tar.gz),
``SM_NUM_GPUS`` and writes the estimator's hyperparameters to
``$SM_INPUT_CONFIG_DIR/hyperparameters.json`` (default ``/opt/ml/input/config``; values are
strings, JSON-encoded by the PyTorch estimator). When any of those variables is set,
:func:`sagemaker_args` turns them into flags placed *before* the typed ones (typed flags win):

- ``--data $SM_CHANNEL_TRAIN``, ``--out $SM_OUTPUT_DATA_DIR/run``, ``--export-dir $SM_MODEL_DIR``
  (best checkpoint + config + summary copied there at the end);
- ``--device cuda`` when ``SM_NUM_GPUS`` > 0, else ``--device cpu``;
- every hyperparameter ``key: value`` as ``--key value`` (``true``/``false`` as ``--key`` /
  ``--no-key``; SageMaker's own ``sagemaker_*`` keys are skipped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

SM_VARS = ("SM_CHANNEL_TRAIN", "SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR", "SM_NUM_GPUS")


def hyperparameters_file(env: Mapping[str, str]) -> Path:
    """SageMaker's hyperparameters file path."""
    return Path(env.get("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config")) / "hyperparameters.json"


def sagemaker_args(env: Mapping[str, str] | None = None) -> list[str]:
    """Flags derived from the SageMaker environment (empty when no ``SM_*`` variable is set).

    Raises:
        ValueError: the hyperparameters file exists but is not a JSON object (names the file).
    """
    env = os.environ if env is None else env
    if not any(v in env for v in SM_VARS):
        return []
    args: list[str] = []
    if env.get("SM_CHANNEL_TRAIN"):
        args += ["--data", env["SM_CHANNEL_TRAIN"]]
    if env.get("SM_OUTPUT_DATA_DIR"):
        args += ["--out", str(Path(env["SM_OUTPUT_DATA_DIR"]) / "run")]
    if env.get("SM_MODEL_DIR"):
        args += ["--export-dir", env["SM_MODEL_DIR"]]
    if env.get("SM_NUM_GPUS") is not None:
        try:
            gpus = int(env["SM_NUM_GPUS"])
        except ValueError:
            raise ValueError(f"SM_NUM_GPUS: expected an integer, got {env['SM_NUM_GPUS']!r}") from None
        args += ["--device", "cuda" if gpus > 0 else "cpu"]
    path = hyperparameters_file(env)
    if path.is_file():
        try:
            hps = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc})") from None
        if not isinstance(hps, dict):
            raise ValueError(f"{path}: expected a JSON object of hyperparameters")
        for key, raw in hps.items():
            if key.startswith("sagemaker_"):
                continue
            value = raw
            if isinstance(raw, str):
                try:
                    value = json.loads(raw)
                except json.JSONDecodeError:
                    value = raw
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + key.replace("_", "-"))
            elif value is None:
                args += [flag, "none"]
            else:
                args += [flag, str(value)]
    return args

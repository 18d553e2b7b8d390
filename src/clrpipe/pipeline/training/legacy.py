"""The article's code path: train with TensorFlow Addons 0.23's own CyclicalLearningRate.

tfa cannot import under Keras 3, so `schedule.backend: tfa` hands the training to
`legacy/tfa_train.py` in the separately locked `legacy/.venv` (TF 2.15, Keras 2, tfa 0.23):
the arrays and the initial weights go over as .npz files, the history, the learning rate of
every step, the test metrics and the final weights come back. The caller then owns a Keras 3
model with tfa-trained weights, logged and saved like any other run.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import clrpipe
from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.training import loop
from clrpipe.schedules import CyclicalLearningRate

__all__ = ["BUILD_HINT", "RUN_FILES", "LegacyRun", "legacy_dir", "train_with_tfa"]

BUILD_HINT = "build it with `python3 -m uv sync --frozen --project legacy`"
RUN_FILES = ("legacy/tfa_train.py", "legacy/tfa_common.py", "legacy/pyproject.toml",
             "legacy/uv.lock")
"""What a tfa training runs besides this package (a DVC dependency of the stages using it)."""


@dataclass
class LegacyRun:
    """What a tfa training returns: its history, test metrics, final weights and TF version."""

    history: loop.History
    test: dict[str, float]
    weights: list[np.ndarray]
    tensorflow: str


def legacy_dir(project_root: Path) -> Path:
    """$CLRPIPE_LEGACY_DIR if set, else `legacy/` of the project or of clrpipe's source tree."""
    if os.environ.get("CLRPIPE_LEGACY_DIR"):
        candidates = [Path(os.environ["CLRPIPE_LEGACY_DIR"])]
    else:
        source_tree = Path(clrpipe.__file__).resolve().parents[2]
        candidates = [project_root / "legacy", source_tree / "legacy"]
    for folder in candidates:
        if (folder / ".venv" / "bin" / "python").is_file() and (folder / "tfa_train.py").is_file():
            return folder
    raise ClrpipeError(
        f"schedule.backend: tfa needs the legacy environment {candidates[0]}/.venv "
        f"(TensorFlow 2.15 + tensorflow-addons 0.23); {BUILD_HINT}"
    )


def train_with_tfa(
    schedule: CyclicalLearningRate,
    initial_weights: list[np.ndarray],
    *,
    units: list[int],
    activation: str,
    dropout: float = 0.0,
    l2: float = 0.0,
    data: dict[str, np.ndarray],
    epochs: int,
    batch_size: int,
    momentum: float,
    seed: int,
    project_root: Path,
) -> LegacyRun:
    """Fit the network from `initial_weights` with tfa's schedule in the legacy environment.

    `data` holds x, y and optionally x_val/y_val and x_test/y_test. Batches are shuffled every
    epoch (Keras 2's own shuffle, seeded), so losses match a Keras 3 run only in distribution;
    the exact comparison with shuffling off is tests/test_tfa_parity.py.
    """
    folder = legacy_dir(project_root)
    with tempfile.TemporaryDirectory(prefix="clrpipe-tfa-") as scratch:
        scratch = Path(scratch)
        np.savez(scratch / "data.npz", **data)
        np.savez(scratch / "weights.npz", *initial_weights)
        run = {
            "schedule": schedule.get_config(),
            "units": list(units),
            "activation": activation,
            "dropout": dropout,
            "l2": l2,
            "epochs": epochs,
            "batch_size": batch_size,
            "momentum": momentum,
            "shuffle": True,
            "seed": seed,
            "weights_out": str(scratch / "trained.npz"),
        }
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME",
                                                                 "VIRTUAL_ENV")}
        done = subprocess.run(
            [str(folder / ".venv" / "bin" / "python"), str(folder / "tfa_train.py"),
             "--data", str(scratch / "data.npz"), "--weights", str(scratch / "weights.npz"),
             "--runs", "-"],
            input=json.dumps([run]), capture_output=True, text=True, env=env, check=False,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ClrpipeError(f"{folder / 'tfa_train.py'}: failed ({last})")
        output = json.loads(done.stdout)
        with np.load(scratch / "trained.npz") as saved:
            weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    result = output["runs"][0]
    losses = result["history"]["loss"]
    if not all(np.isfinite(losses)):
        raise ClrpipeError(
            f"training diverged under tfa: epoch losses {losses}; lower "
            "schedule.maximal_learning_rate"
        )
    history = loop.History(
        epochs=result["history"],
        epoch_seconds=result["epoch_seconds"],
        lr_steps=list(range(result["iterations"])),
        lr_values=result["lr_per_step"],
    )
    return LegacyRun(history, result.get("test", {}), weights, output["tensorflow"])

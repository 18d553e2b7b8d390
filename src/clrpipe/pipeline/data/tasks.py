"""What a learning task needs: the network's output layer, its loss, the score every comparison
uses, and the test metrics in the target's own units.

| task | output | loss | score (higher is better) | test metrics |
|---|---|---|---|---|
| binary | 1 sigmoid unit | binary cross-entropy | accuracy | accuracy, log loss, ROC AUC |
| multiclass | K softmax units | sparse categorical cross-entropy | accuracy | accuracy, log loss |
| regression | 1 linear unit | mean squared error | R² | RMSE, MAE, R² (target units) |

A regression target is standardized for training (`target_mean`, `target_std` from the training
part); RMSE and MAE are reported back in its own units. `Dataset` is what the `split` stage
writes to `dataset.json`: feature columns, the target column and the output spec.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clrpipe.errors import ClrpipeError, first_line

__all__ = ["CARDIO", "DATASET_FILE", "Dataset", "OutputSpec", "held_out_metrics"]

DATASET_FILE = "dataset.json"


@dataclass(frozen=True)
class OutputSpec:
    """The task a network is built for: what a model builder gets as `output`."""

    task: str
    classes: tuple = ()
    target_mean: float | None = None
    target_std: float | None = None

    @property
    def classification(self) -> bool:
        return self.task != "regression"

    @property
    def units(self) -> int:
        """Output units: one (binary, regression) or one per class."""
        return len(self.classes) if self.task == "multiclass" else 1

    @property
    def activation(self) -> str:
        return {"binary": "sigmoid", "multiclass": "softmax"}.get(self.task, "linear")

    @property
    def loss(self) -> str:
        return {"binary": "binary_crossentropy",
                "multiclass": "sparse_categorical_crossentropy"}.get(self.task,
                                                                      "mean_squared_error")

    @property
    def score(self) -> str:
        """The metric comparisons rank by (higher is better): accuracy, or R² for regression."""
        return "accuracy" if self.classification else "r2"

    def keras_metrics(self) -> list:
        """The score as a Keras metric, logged per epoch as `<score>` and `val_<score>`."""
        if self.classification:
            return ["accuracy"]
        import keras

        return [keras.metrics.R2Score(name="r2")]


CARDIO = OutputSpec("binary", (0, 1))
"""The cardio table's task: cardiovascular disease, yes or no."""


@dataclass(frozen=True)
class Dataset:
    """The split as the trainings see it: feature columns, target column and task."""

    features: tuple[str, ...]
    target: str
    output: OutputSpec
    details: dict = field(default_factory=dict)
    name: str = "cardio"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "features": list(self.features), "target": self.target,
                "output": {**asdict(self.output), "classes": list(self.output.classes)},
                **({"details": self.details} if self.details else {})}

    @classmethod
    def from_dict(cls, found: dict) -> Dataset:
        output = dict(found["output"])
        output["classes"] = tuple(output.get("classes") or ())
        return cls(tuple(found["features"]), found["target"], OutputSpec(**output),
                   found.get("details", {}), found.get("name", "cardio"))

    @classmethod
    def read(cls, folder: Path) -> Dataset:
        """`<split dir>/dataset.json`, or one line saying to rerun the split."""
        path = folder / DATASET_FILE
        if not path.is_file():
            raise ClrpipeError(f"{path}: not found; run `clrpipe split` first")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as err:
            raise ClrpipeError(f"{path}: not a split description ({first_line(err)}); rerun "
                               "`clrpipe split`") from None


def held_out_metrics(evaluated: dict[str, float], y: np.ndarray, predicted: np.ndarray,
                 output: OutputSpec) -> dict[str, float]:
    """Test metrics from Keras's evaluation (`loss` and the score) and the predictions:
    classification adds log loss (and ROC AUC for binary); regression gives RMSE, MAE and R²
    in the target's units (the score Keras computed in standardized units is the same R²)."""
    from sklearn import metrics

    if output.classification:
        found = {"accuracy": float(evaluated["accuracy"]), "loss": float(evaluated["loss"])}
        labels = list(range(max(output.units, 2)))
        probabilities = predicted if output.task == "multiclass" else np.column_stack(
            [1 - predicted.reshape(-1), predicted.reshape(-1)])
        found["log_loss"] = float(metrics.log_loss(y.reshape(-1), probabilities, labels=labels))
        if output.task == "binary":
            found["roc_auc"] = float(metrics.roc_auc_score(y.reshape(-1), predicted.reshape(-1)))
        return found
    scale, shift = output.target_std or 1.0, output.target_mean or 0.0
    truth = y.reshape(-1) * scale + shift
    guess = predicted.reshape(-1) * scale + shift
    return {
        "rmse": float(np.sqrt(metrics.mean_squared_error(truth, guess))),
        "mae": float(metrics.mean_absolute_error(truth, guess)),
        "r2": float(metrics.r2_score(truth, guess)),
        "loss": float(evaluated["loss"]),
    }

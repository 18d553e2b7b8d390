"""The model users serve: an MLflow pyfunc taking raw rows and returning named predictions.

`ServingModel` wraps the trained Keras network (artifact `network`, the same `.keras` file the
stage writes) and the fitted preprocessing (artifact `preprocessing`: `data.preprocess`'s
cardio JSON or the table's `preprocessor.joblib`). `predict` validates a request with the
pipeline's own rules, computes the features, runs the network and returns
`probability_<class>` columns and `prediction` (regression: `prediction` in the target's units;
cardio adds `rejected`). `log_serving_model` logs it (name `serving`) in the active run with an
input example and registers it.

Why a pyfunc and not a Keras model with preprocessing layers: the validation and repair rules
are row-wise pandas/numpy code with one-line errors, which layers cannot raise, and on one
request the pyfunc answered in about a fifth of the time (`bench/benchmark.py --serving-only`;
docs/serving.md).

The signature lists the raw columns, numbers as `double` and categories as `string`, all
optional: MLflow enforces a signature before the model sees a request, and its error for a
missing required column is multi-line and embeds the whole request, so the model checks the
columns itself and answers one line naming the column. MLflow's scoring server also rewrites
the message of an error raised in `predict` to embed the request; `BadRequest` keeps its own
line. Text in a numeric column of a JSON request is refused by MLflow's own conversion, in one
line naming the column; in a CSV request by its CSV parser, in one line naming the value.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline.data import preprocess
from clrpipe.pipeline.tracking import runs

__all__ = ["MODEL_NAME", "REQUIREMENTS", "BadRequest", "ServingModel", "fitted_preprocessing",
           "load", "log_serving_model", "predict_file", "read_rows", "score", "signature"]

MODEL_NAME = "serving"
REQUIREMENTS = ("clrpipe", "pandas", "pandera", "scikit-learn", "joblib", "pydantic")
"""What the serving model needs beyond a logged Keras model's `runs.MODEL_PACKAGES`."""


class BadRequest(MlflowException):
    """A request the model refuses: HTTP 400 with one line naming the column.

    MLflow's scoring server assigns `message` again to prefix the request's full repr; the
    first assignment (ours) is kept."""

    def __init__(self, message: str):
        super().__init__(message, error_code=BAD_REQUEST)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


class ServingModel(mlflow.pyfunc.PythonModel):
    """Raw rows in, predictions out (see the module docstring)."""

    def load_context(self, context) -> None:
        import keras

        self._network = keras.saving.load_model(context.artifacts["network"], compile=False)
        self._preprocessing = preprocess.load(Path(context.artifacts["preprocessing"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            raise BadRequest(f"expected a table of rows with columns "
                             f"{', '.join(self._preprocessing.columns)}")
        try:
            x, rejected = self._preprocessing.features(model_input)
        except ClrpipeError as err:
            raise BadRequest(str(err)) from None
        kept = np.array([r is None for r in rejected])
        width = 1 if self._preprocessing.regression or len(self._preprocessing.classes) == 2 \
            else len(self._preprocessing.classes)
        output = np.full((len(x), width), np.nan)
        if kept.any():  # a direct call: no tf.function retraced for each new request size
            found = self._network(x[kept], training=False)
            output[kept] = np.asarray(found, dtype=np.float64).reshape(int(kept.sum()), width)
        return self._preprocessing.predictions(output, rejected)


def signature(preprocessing, output: pd.DataFrame) -> ModelSignature:
    """Inputs: the raw columns, optional (see the module docstring). Outputs: the prediction
    columns as `predict` returns them."""
    kinds = preprocessing.column_kinds()
    inputs = Schema([ColSpec(DataType.double if kinds[c] == "number" else DataType.string, c,
                             required=False) for c in preprocessing.columns])
    columns = []
    for name in output.columns:
        if name.startswith("probability_") or preprocessing.regression:
            columns.append(ColSpec(DataType.double, name))
        elif name == "rejected":
            columns.append(ColSpec(DataType.string, name, required=False))
        else:
            label = type(preprocessing.classes[0])
            kind = {bool: DataType.boolean, int: DataType.long}.get(label, DataType.string)
            columns.append(ColSpec(kind, name, required=False))
    return ModelSignature(inputs=inputs, outputs=Schema(columns))


def log_serving_model(network_file: Path, preprocessing, registered_name: str | None,
                      dataset: str, stage: str) -> dict[str, str]:
    """Log the pyfunc in the active MLflow run and register it as `registered_name` (None:
    not registered). Returns what the stage's metrics record: the model's URI, name and
    version."""
    from clrpipe.pipeline.tracking import registry
    with tempfile.TemporaryDirectory() as scratch, _quiet_logging():
        suffix = ".json" if preprocessing.kind == "cardio" else ".joblib"
        fitted = Path(scratch) / f"preprocessing{suffix}"
        preprocessing.save(fitted)
        network = Path(scratch) / "network.keras"
        shutil.copyfile(network_file, network)
        model = ServingModel()
        model._network = _load_network(network)
        model._preprocessing = preprocessing
        example = preprocessing.example()
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=ServingModel(),
            artifacts={"network": str(network), "preprocessing": str(fitted)},
            signature=signature(preprocessing, model.predict(None, example)),
            input_example=example, pip_requirements=runs.model_requirements(*REQUIREMENTS),
            metadata={"clrpipe": {"kind": preprocessing.kind, "dataset": dataset,
                                  "columns": preprocessing.column_kinds()}},
        )
    found = {"serving_model_uri": info.model_uri}
    if registered_name is not None:
        run_id = mlflow.active_run().info.run_id
        version = registry.register(MlflowClient(), registered_name, info.model_uri, run_id,
                                    info.model_id, stage)
        found |= {"registered_model": registered_name, "model_version": version}
    return found


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """No progress bars, cloudpickle and pip hints while logging (a stage prints one line)."""
    loggers = [logging.getLogger(n) for n in ("mlflow.pyfunc", "mlflow.utils.environment",
                                              "mlflow.models.model")]
    levels = [logger.level for logger in loggers]
    before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if before is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = before


def fitted_preprocessing(split_dir: Path, data_params):
    """The preprocessing `split` fitted (its `scaler.json` or `preprocessor.joblib`), with
    cardio's repair limits from `data_params`."""
    import json

    from clrpipe.pipeline.params import CardioData

    if isinstance(data_params, CardioData):
        path = split_dir / "scaler.json"
        if not path.is_file():
            raise ClrpipeError(f"{path}: not found; run `clrpipe split` first")
        return preprocess.CardioPreprocessing.from_split(json.loads(path.read_text()),
                                                         data_params.limits)
    path = split_dir / "preprocessor.joblib"
    if not path.is_file():
        raise ClrpipeError(f"{path}: not found; run `clrpipe split` with data: table first")
    return preprocess.load(path)


def _load_network(path: Path):
    import keras

    return keras.saving.load_model(path, compile=False)


def load(uri: str) -> ServingModel:
    """The clrpipe serving model at `uri` (`models:/<name>@champion`, `models:/<id>`, a
    path), loaded with its artifacts; one line if it is not there or not ours."""
    try:
        with _quiet_logging():
            loaded = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:
        raise ClrpipeError(f"--model {uri}: cannot load it ({first_line(err)})") from None
    model = loaded.unwrap_python_model()
    if not isinstance(model, ServingModel):
        raise ClrpipeError(f"--model {uri}: not a clrpipe serving model (expected the "
                           f"'{MODEL_NAME}' model a training stage logs)")
    return model


def read_rows(raw: bytes, source: str) -> pd.DataFrame:
    """A raw table to score: Parquet, or UTF-8 text separated by `;`, `,` or tabs (the most
    frequent in the header), cells kept as written (the model parses the numbers)."""
    import io

    from clrpipe.pipeline.data.cardio import decode_text

    if raw.startswith(b"PAR1"):
        return pd.read_parquet(io.BytesIO(raw))
    text = decode_text(raw, source).lstrip("\ufeff")
    header = text.split("\n", 1)[0]
    if not header.strip():
        raise ClrpipeError(f"{source}: empty file; expected a header line and data rows")
    separator = max((";", ",", "\t"), key=header.count)
    try:
        return pd.read_csv(io.StringIO(text), sep=separator, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, ValueError) as err:
        raise ClrpipeError(f"{source}: not a {separator!r}-separated table "
                           f"({first_line(err)})") from None


def score(model: ServingModel, frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The model's predictions for every row of `frame` (its `id` column first when it has
    one); a refused table is one line naming `source` and the column."""
    try:
        out = model.predict(None, frame)
    except BadRequest as err:
        raise ClrpipeError(f"{source}: {err.message}") from None
    ids = [c for c in frame.columns if str(c).strip().lower() == "id"]
    if ids:
        out.insert(0, "id", frame[ids[0]].to_numpy())
    return out


def predict_file(overrides: tuple[str, ...], uri: str, source: Path, target: Path) -> None:
    """`clrpipe predict`: score `source` with the model at `uri`, write `target` atomically."""
    import time

    import click

    from clrpipe.pipeline import config
    from clrpipe.pipeline.outputs import atomic_outputs
    from clrpipe.pipeline.params import TrackingParams
    from clrpipe.pipeline.tracking import runs

    if target.suffix.lower() not in (".csv", ".parquet"):
        raise ClrpipeError(f"{target}: expected a .csv or .parquet output file")
    try:
        raw = source.read_bytes()
    except OSError as err:
        raise ClrpipeError(f"{source}: cannot read it ({err.strerror})") from None
    cfg = config.load(overrides)
    config.validated(cfg)
    store = runs.store_uri(config.section(cfg, "tracking", TrackingParams).uri)
    started = time.perf_counter()
    mlflow.set_tracking_uri(store)  # where models:/ URIs resolve
    model = load(uri)
    frame = read_rows(raw, str(source))
    out = score(model, frame, str(source))
    with atomic_outputs(target) as (tmp,):
        if target.suffix.lower() == ".parquet":
            out.to_parquet(tmp, index=False)
        else:
            out.to_csv(tmp, index=False)
    rejected = int(out["rejected"].notna().sum()) if "rejected" in out else 0
    click.echo(f"predict: {len(out)} rows scored ({rejected} rejected) with {uri} in "
               f"{time.perf_counter() - started:.1f} s -> {target}")

"""A user's table, typed: the `TableSchema` `prepare` finds and `split` reads, the pandera
schema of a cleaned frame, and the value-kind tests (boolean, text, number) the reading,
preparing and encoding modules share. Pure.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.params import TASKS

__all__ = [
    "CLASSIFICATION",
    "SCHEMA_KEY",
    "TableSchema",
    "as_text",
    "frame_schema",
    "integer_valued",
    "is_bool",
    "is_number",
    "is_text",
    "mlflow_keys",
    "plain",
]

SCHEMA_KEY = "clrpipe_table_schema"
"""Where `prepare` puts the table's schema for `split`: the prepared parquet's `attrs`."""
CLASSIFICATION = ("binary", "multiclass")


@dataclass(frozen=True)
class TableSchema:
    """What `prepare_table` found: the target, the task and the feature columns by kind."""

    target: str
    task: str  # "binary" | "multiclass" | "regression"
    task_inferred: bool
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    classes: tuple | None  # sorted labels (str, int or bool) for classification, else None

    @property
    def is_classification(self) -> bool:
        return self.task in CLASSIFICATION

    @property
    def features(self) -> tuple[str, ...]:
        """The feature columns of the cleaned frame, in its order (numeric, then categorical)."""
        return (*self.numeric, *self.categorical)

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "task": self.task,
            "task_inferred": self.task_inferred,
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "classes": None if self.classes is None else list(self.classes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TableSchema:
        if d.get("task") not in TASKS:
            raise ClrpipeError(f"table schema: task expected one of {', '.join(TASKS)}, "
                               f"got {d.get('task')!r}")
        classes = d.get("classes")
        return cls(
            target=str(d["target"]),
            task=d["task"],
            task_inferred=bool(d["task_inferred"]),
            numeric=tuple(d["numeric"]),
            categorical=tuple(d["categorical"]),
            classes=None if classes is None else tuple(classes),
        )


def frame_schema(schema: TableSchema, missing: str = "impute") -> pa.DataFrameSchema:
    """The pandera schema of a cleaned frame: numeric columns as finite floats, categorical
    ones as text (nullable only with `missing: impute`), the target never null (one of the
    classes for classification, a finite float for regression); no other column."""
    nullable = missing == "impute"
    finite = pa.Check(lambda s: s.isna() | np.isfinite(s), error="finite numbers")
    columns = {c: pa.Column(float, finite, coerce=True, nullable=nullable) for c in schema.numeric}
    columns |= {c: pa.Column(str, coerce=True, nullable=nullable) for c in schema.categorical}
    if schema.is_classification:
        kind = type(schema.classes[0])
        dtype = {bool: bool, int: "int64"}.get(kind, str)
        columns[schema.target] = pa.Column(
            dtype, pa.Check.isin(list(schema.classes)), coerce=True, nullable=False
        )
    else:
        columns[schema.target] = pa.Column(float, finite, coerce=True, nullable=False)
    return pa.DataFrameSchema(columns, strict=True, ordered=True, name="table")


# --- value kinds ---------------------------------------------------------------------------------


def is_bool(s: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(s.dtype):
        return True
    if pd.api.types.is_object_dtype(s.dtype):
        values = s.dropna()
        return len(values) > 0 and all(isinstance(v, bool | np.bool_) for v in values)
    return False


def is_text(s: pd.Series) -> bool:
    return (
        pd.api.types.is_object_dtype(s.dtype)
        or pd.api.types.is_string_dtype(s.dtype)
        or isinstance(s.dtype, pd.CategoricalDtype)
    )


def is_number(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)


def integer_valued(values: pd.Series) -> bool:
    v = values.dropna().to_numpy(dtype=float)
    return bool(len(v)) and bool(np.all(np.isfinite(v))) and bool(np.all(v == np.round(v)))


def as_text(s: pd.Series) -> pd.Series:
    """Category values as text (`1`, not `1.0`; `True`), missing ones kept missing."""
    present = s.notna()
    if is_bool(s):
        values = s.map(lambda v: str(bool(v)), na_action="ignore")
    elif is_number(s) and integer_valued(s):
        values = s.map(lambda v: str(int(v)), na_action="ignore")
    else:
        values = s.map(lambda v: str(v).strip(), na_action="ignore")
    values = values.astype("str")
    return values.mask(~present | (values == ""))


def plain(value: Any) -> str | int | bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)  # 1.0 read back from a float column is the class 1
    return str(value)


# --- names in MLflow ---------------------------------------------------------------------------

MLFLOW_UNSAFE = re.compile(r"[^\w.\- ]")
"""What MLflow refuses in a metric or param name (its rule is `[/\\w.\\- :]`; `/` and `:` go
too, since a path-like name must also normalize to itself and Windows refuses `:`)."""


def mlflow_key(name: str) -> str:
    """`name` as an MLflow metric/param name part: itself when MLflow takes it, else the unsafe
    characters as `_` plus 6 hex digits of its sha1, so that two names never meet
    (`blood pressure (mmHg)` -> `blood pressure _mmHg__5f1c2a`)."""
    safe = MLFLOW_UNSAFE.sub("_", name)
    if safe == name:
        return name
    return f"{safe[:200]}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def mlflow_keys(report: dict) -> tuple[dict, dict[str, str]]:
    """`report` with every key made `mlflow_key`-safe (nested too), and the renamed keys
    (original -> safe): what a stage logs to MLflow, and what it says it renamed."""
    renamed: dict[str, str] = {}

    def walk(value):
        if not isinstance(value, dict):
            return value
        out = {}
        for key, inner in value.items():
            safe = mlflow_key(str(key))
            if safe != str(key):
                renamed[str(key)] = safe
            out[safe] = walk(inner)
        return out

    return walk(report), renamed

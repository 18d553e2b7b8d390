"""Encoding a user's table for the network, fitted on the training part only.

`Preprocessor`: fitted on the training part only; numbers -> median imputation (with a 0/1
`missing:<column>` indicator for each column that had gaps in training, left unscaled) ->
standardization; categories -> most frequent imputation -> one-hot (`<column>=<value>`) of at
most `MAX_CATEGORIES` columns: a column with more training values keeps the most frequent ones
and pools the rest in `<column>=<other>`, which an unseen value also gets (without pooled
values an unseen one is all zeros); unseen values are counted. Never a dense one-hot with
thousands of columns.
"""

from __future__ import annotations

import math
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.data.table_schema import TableSchema, as_text, plain

__all__ = ["MAX_CATEGORIES", "OTHER", "Preprocessor"]

MAX_CATEGORIES = 32
"""One-hot columns per categorical column at most: its 31 most frequent training values and
one column pooling the rest (sklearn's infrequent category), which also takes unseen values."""
OTHER = "<other>"
"""The pooled column's value in feature names (`colour=<other>`)."""


def _json(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class Preprocessor:
    """Features and target encoding fitted on the training part only (see the module doc)."""

    def __init__(self, schema: TableSchema, missing: str, objects: dict[str, Any]):
        self.schema = schema
        self.missing = missing
        self._imputer: SimpleImputer | None = objects.get("imputer")
        self._scaler: StandardScaler | None = objects.get("scaler")
        self._cat_imputer: SimpleImputer | None = objects.get("cat_imputer")
        self._encoder: OneHotEncoder | None = objects.get("encoder")
        self.target_mean: float | None = objects.get("target_mean")
        self.target_std: float | None = objects.get("target_std")
        self.indicators: list[str] = []
        if self._imputer is not None and self._imputer.indicator_ is not None:
            self.indicators = [
                schema.numeric[i] for i in self._imputer.indicator_.features_
            ]
        self._known: dict[str, set[str]] = {}
        self.categories: dict[str, list[str]] = {}  # the values with a column of their own
        self.encodings: dict[str, dict[str, int]] = {}
        if self._encoder is not None:
            infrequent = self._encoder.infrequent_categories_
            for c, cats, rare in zip(schema.categorical, self._encoder.categories_, infrequent,
                                     strict=True):
                rare = set() if rare is None else {str(v) for v in rare}
                self._known[c] = {str(v) for v in cats}
                self.categories[c] = [str(v) for v in cats if str(v) not in rare]
                self.encodings[c] = {"levels": len(cats), "columns": len(self.categories[c])
                                     + bool(rare), "other": len(rare)}
        self.features: list[str] = [
            *schema.numeric,
            *(f"missing:{c}" for c in self.indicators),
            *(name for c in schema.categorical for name in self._one_hot_names(c)),
        ]

    def _one_hot_names(self, column: str) -> list[str]:
        """`<column>=<value>` per kept value, then `<column>=<other>` when some were pooled
        (sklearn's column order)."""
        names = [f"{column}={v}" for v in self.categories[column]]
        return names + ([f"{column}={OTHER}"] if self.encodings[column]["other"] else [])

    @classmethod
    def fit(cls, train: pd.DataFrame, schema: TableSchema, missing: str) -> Preprocessor:
        objects: dict[str, Any] = {}
        if schema.numeric:
            values = cls._numeric(train, schema)
            if missing == "impute":
                objects["imputer"] = SimpleImputer(
                    strategy="median", add_indicator=True, keep_empty_features=True
                ).fit(values)
                values = objects["imputer"].transform(values)[:, : len(schema.numeric)]
            objects["scaler"] = StandardScaler().fit(values)
        if schema.categorical:
            values = cls._text(train, schema)
            objects["cat_imputer"] = SimpleImputer(
                strategy="most_frequent", keep_empty_features=True
            ).fit(values)
            objects["encoder"] = OneHotEncoder(
                handle_unknown="infrequent_if_exist", max_categories=MAX_CATEGORIES,
                sparse_output=False, dtype=np.float32,
            ).fit(objects["cat_imputer"].transform(values))
        if not schema.is_classification:
            y = train[schema.target].to_numpy(dtype=float)
            std = float(y.std())
            objects["target_mean"] = float(y.mean())
            objects["target_std"] = std if std > 0 and math.isfinite(std) else 1.0
        return cls(schema, missing, objects)

    @staticmethod
    def _numeric(frame: pd.DataFrame, schema: TableSchema) -> np.ndarray:
        return frame[list(schema.numeric)].astype(float).to_numpy(dtype=float)

    @staticmethod
    def _text(frame: pd.DataFrame, schema: TableSchema) -> np.ndarray:
        columns = [as_text(frame[c]).astype(object) for c in schema.categorical]
        out = np.column_stack([c.where(c.notna(), np.nan).to_numpy() for c in columns])
        return out.astype(object)

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, dict]:
        """Features (float32, one column per `features` name) and counts of what was imputed
        and of category values not seen in training, per column."""
        schema = self.schema
        absent = [c for c in schema.features if c not in frame.columns]
        if absent:
            raise ClrpipeError(
                f"preprocessor: column '{absent[0]}' missing; expected the columns it was "
                f"fitted on ({', '.join(schema.features)})"
            )
        parts, imputed, unseen = [], {}, {}
        if schema.numeric:
            values = self._numeric(frame, schema)
            gaps = np.isnan(values)
            imputed |= {c: int(n) for c, n in zip(schema.numeric, gaps.sum(axis=0), strict=True)}
            if self._imputer is not None:
                filled = self._imputer.transform(values)
                k = len(schema.numeric)
                values, indicators = filled[:, :k], filled[:, k:]
            else:
                if gaps.any():
                    column = schema.numeric[int(gaps.any(axis=0).argmax())]
                    raise ClrpipeError(
                        f"column '{column}' has {int(gaps.sum(axis=0).max())} missing value(s); "
                        "data.missing is refuse"
                    )
                indicators = np.zeros((len(frame), 0))
            parts += [self._scaler.transform(values), indicators]
        if schema.categorical:
            values = self._text(frame, schema)
            gaps = pd.isna(values)
            imputed |= {c: int(n) for c, n in
                        zip(schema.categorical, gaps.sum(axis=0), strict=True)}
            filled = self._cat_imputer.transform(values)
            for i, c in enumerate(schema.categorical):
                known = self._known[c]
                unseen[c] = int(sum(v not in known for v in filled[:, i]))
            parts.append(self._encoder.transform(filled))
        x = np.hstack(parts).astype(np.float32) if parts else np.zeros((len(frame), 0), np.float32)
        return x, {"unseen_categories": unseen, "imputed": imputed}

    def encode_target(self, values: pd.Series) -> np.ndarray:
        """Class indices (int64, in `schema.classes` order) or the standardized target
        (float32)."""
        schema = self.schema
        if not schema.is_classification:
            y = pd.Series(values).to_numpy(dtype=float)
            return ((y - self.target_mean) / self.target_std).astype(np.float32)
        index = {c: i for i, c in enumerate(schema.classes)}
        labels = pd.Series(values).map(plain) if len(values) else pd.Series([], dtype=object)
        codes = labels.map(index)
        if codes.isna().any():
            bad = labels[codes.isna()].iloc[0]
            raise ClrpipeError(
                f"column '{schema.target}': label {bad!r} is not one of the classes "
                f"({', '.join(map(repr, schema.classes))})"
            )
        return codes.to_numpy(dtype=np.int64)

    def decode_target(self, values: np.ndarray) -> np.ndarray:
        """Labels from class indices (or from class probabilities: (n, K) by argmax, (n,) or
        (n, 1) binary ones at 0.5), or the target in its original units."""
        values = np.asarray(values)
        if not self.schema.is_classification:
            return values.astype(float).reshape(-1) * self.target_std + self.target_mean
        if values.ndim == 2 and values.shape[1] > 1:
            codes = values.argmax(axis=1)
        else:
            values = values.reshape(-1)
            codes = (values >= 0.5).astype(int) if values.dtype.kind == "f" else values
        return np.array(list(self.schema.classes))[codes.astype(int)]

    def describe(self) -> dict:
        """JSON-able summary: features, task, classes, target scaling, categories, medians."""
        medians = {}
        if self._imputer is not None:
            medians = dict(zip(self.schema.numeric, self._imputer.statistics_, strict=True))
        scaler = self._scaler
        return _json({
            "task": self.schema.task,
            "target": self.schema.target,
            "classes": self.schema.classes,
            "missing": self.missing,
            "features": self.features,
            "n_features": len(self.features),
            "numeric": self.schema.numeric,
            "categorical": self.schema.categorical,
            "indicators": self.indicators,
            "categories": self.categories,
            "encodings": self.encodings,
            "medians": medians,
            "means": {} if scaler is None else dict(zip(self.schema.numeric, scaler.mean_,
                                                        strict=True)),
            "scales": {} if scaler is None else dict(zip(self.schema.numeric, scaler.scale_,
                                                         strict=True)),
            "most_frequent": {} if self._cat_imputer is None else dict(
                zip(self.schema.categorical, self._cat_imputer.statistics_, strict=True)
            ),
            "target_mean": self.target_mean,
            "target_std": self.target_std,
        })

    def save(self, path) -> None:
        """One joblib file: the fitted sklearn objects, the schema and `describe()`."""
        objects = {
            "imputer": self._imputer, "scaler": self._scaler, "cat_imputer": self._cat_imputer,
            "encoder": self._encoder, "target_mean": self.target_mean,
            "target_std": self.target_std,
        }
        joblib.dump({
            "format": "clrpipe.tables.Preprocessor/1",
            "schema": self.schema.to_dict(),
            "missing": self.missing,
            "objects": objects,
            "describe": self.describe(),
        }, path)

    @classmethod
    def load(cls, path) -> Preprocessor:
        state = joblib.load(path)
        if not isinstance(state, dict) or state.get("format") != "clrpipe.tables.Preprocessor/1":
            raise ClrpipeError(f"{path}: not a saved clrpipe table preprocessor")
        return cls(TableSchema.from_dict(state["schema"]), state["missing"], state["objects"])

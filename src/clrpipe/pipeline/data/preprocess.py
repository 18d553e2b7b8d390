"""Raw rows -> the network's features with what the pipeline fitted; network outputs -> named
predictions. Pure: frames and fitted state in, arrays and frames out (no file or network I/O
besides `save`/`load`, which the caller points at a file).

What the serving model (`tracking.serving`) and `clrpipe predict` apply to a request, so a user
sends the raw table's columns as `prepare` receives them, not 14 standardized features:

- `data: cardio` (`CardioPreprocessing`): the columns `age`, `gender`, ..., `active` (header
  names trimmed and lower-cased, `id`, `cardio` and other extra columns ignored); `prepare`'s
  validation (numbers, no missing value, the documented codes, `age` > 0), its value repairs
  (rules 2-5 of `data.cardio`) and features, then `split`'s scaler (`scaler.json`). A row that
  `prepare` would drop (rule 6: implausible after repair) is not scored: its probabilities are
  NaN and `rejected` names the rule (`ap_hi_out_of_range`, ...). Duplicates are not dropped:
  every row of a request is an answer.
- `data: table` (`TablePreprocessing`): the fitted `data.tables.Preprocessor` that `split`
  saved (imputation, one-hot encoding, scaling); the numeric feature columns must hold numbers
  (or be missing, imputed with `data.missing: impute`), other columns are ignored.

A request that fails validation raises one `ClrpipeError` line naming the column, what was
expected and the first bad row (1-based). Outputs: `probability_<class>` per class and
`prediction` (the label), or for regression `prediction` in the target's units.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.data import cardio, tables
from clrpipe.pipeline.params import Limits

__all__ = [
    "CARDIO_COLUMNS",
    "CardioPreprocessing",
    "TablePreprocessing",
    "load",
    "probabilities",
]

CARDIO_COLUMNS = tuple(c for c in cardio.REQUIRED_COLUMNS if c != cardio.TARGET)
"""The raw cardio columns a request needs (the target and `id` are not needed)."""
_CARDIO_EXAMPLE = {"age": [20000.0, 18393.0], "gender": [1.0, 2.0], "height": [165.0, 168.0],
                   "weight": [70.0, 62.0], "ap_hi": [120.0, 110.0], "ap_lo": [80.0, 80.0],
                   "cholesterol": [1.0, 1.0], "gluc": [1.0, 1.0], "smoke": [0.0, 0.0],
                   "alco": [0.0, 0.0], "active": [1.0, 1.0]}


def _rows(mask: np.ndarray) -> tuple[int, int]:
    """(first bad data row, 1-based; how many)."""
    return int(np.flatnonzero(mask)[0]) + 1, int(mask.sum())


def _numbers(values: pd.Series, column: str, allow_missing: bool) -> np.ndarray:
    """A request column as floats, or one line naming the column and its first bad value."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.to_numpy(dtype=float)
    if pd.api.types.is_numeric_dtype(values.dtype):  # numbers already: only gaps to find
        text, missing = values, values.isna().to_numpy()
    else:
        text = values.map(lambda v: v.strip() if isinstance(v, str) else v)
        missing = text.isna().to_numpy() | text.map(
            lambda v: isinstance(v, str) and v.lower() in cardio.MISSING_TOKENS).to_numpy()
    if missing.any() and not allow_missing:
        row, count = _rows(missing)
        raise ClrpipeError(f"column '{column}' has {count} missing value(s) (first in data row "
                           f"{row}); expected a number in every row (clrpipe does not impute)")
    parsed = pd.to_numeric(text.where(~missing), errors="coerce").to_numpy(dtype=float)
    bad = ~missing & np.isnan(parsed)
    if bad.any():
        row, count = _rows(bad)
        raise ClrpipeError(f"column '{column}' expected numbers, got "
                           f"{_shown(values.iloc[row - 1])} (first in data row {row}) in {count} "
                           "row(s)")
    infinite = np.isinf(parsed)
    if infinite.any():
        row, count = _rows(infinite)
        raise ClrpipeError(f"column '{column}' expected finite numbers, got "
                           f"{_shown(values.iloc[row - 1])} (first in data row {row}) in {count} "
                           "row(s)")
    return parsed


def _shown(value) -> str:
    """A cell as the user wrote it: `3`, not `np.float64(3.0)`."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return repr(int(value))
    if isinstance(value, np.generic):
        return repr(value.item())
    return repr(value)


def _refuse_empty(frame: pd.DataFrame, columns) -> None:
    if len(frame) == 0:
        raise ClrpipeError(f"no rows; expected one or more rows with the columns "
                           f"{', '.join(columns)}")


def _allowed(column: str) -> tuple[tuple | None, float | None]:
    """`cardio.RAW_SCHEMA`'s rule for a column: its allowed codes, or its exclusive minimum."""
    codes, minimum = None, None
    for check in cardio.RAW_SCHEMA.columns[column].checks:
        stats = check.statistics or {}
        if "allowed_values" in stats:
            codes = tuple(stats["allowed_values"])
        if "min_value" in stats:
            minimum = float(stats["min_value"])
    return codes, minimum


_RULES = {c: _allowed(c) for c in CARDIO_COLUMNS}


@dataclass(frozen=True)
class CardioPreprocessing:
    """The cardio path: `prepare`'s validation, repairs and features, then `split`'s scaler."""

    limits: Limits
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    kind = "cardio"
    columns = CARDIO_COLUMNS
    classes = tuple(cardio.BINARY)
    regression = False

    @classmethod
    def from_split(cls, scaler: dict, limits: Limits) -> CardioPreprocessing:
        """From `scaler.json`'s content (features, means, scales) and `data.limits`."""
        if tuple(scaler.get("features", ())) != cardio.FEATURES:
            raise ClrpipeError(f"scaler.json: features {scaler.get('features')} are not "
                               f"{list(cardio.FEATURES)}; rerun `clrpipe split`")
        return cls(limits, tuple(map(float, scaler["mean"])), tuple(map(float, scaler["scale"])))

    def features(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[str | None]]:
        """Float32 features of every row (NaN for a rejected one) and why each row was
        rejected (None: scored)."""
        frame = frame.rename(columns=lambda c: str(c).strip().lower())
        _refuse_empty(frame, CARDIO_COLUMNS)
        missing = [c for c in CARDIO_COLUMNS if c not in frame.columns]
        if missing:
            raise ClrpipeError(f"column '{missing[0]}' missing; expected the raw columns "
                               f"{', '.join(CARDIO_COLUMNS)}")
        values = {c: _numbers(frame[c].reset_index(drop=True), c, False) for c in CARDIO_COLUMNS}
        for column, (codes, minimum) in _RULES.items():
            bad = (~np.isin(values[column], codes) if codes is not None
                   else values[column] <= minimum if minimum is not None else None)
            if bad is not None and bad.any():
                row, count = _rows(bad)
                expected = cardio.EXPECTED_TEXT.get(column, "0 or 1")
                shown = _shown(frame[column].iloc[row - 1])
                raise ClrpipeError(f"column '{column}' expected {expected}, got {shown} (first "
                                   f"in data row {row}) in {count} row(s)")
        repaired, _ = cardio.repair_values(pd.DataFrame(values), self.limits)
        rejected: list[str | None] = [None] * len(repaired)
        for reason, mask in cardio.implausible(repaired, self.limits).items():
            for i in np.flatnonzero(mask.to_numpy()):
                rejected[i] = rejected[i] or reason.removeprefix("dropped_")
        x = cardio.features(repaired).to_numpy(dtype=np.float32)
        x -= np.asarray(self.mean)  # in place on float32, as StandardScaler.transform does
        x /= np.asarray(self.scale)
        x[[r is not None for r in rejected]] = np.nan
        return x, rejected

    def predictions(self, output: np.ndarray, rejected: list[str | None]) -> pd.DataFrame:
        """`probability_0`, `probability_1`, `prediction` (0/1, None when rejected) and
        `rejected`."""
        found = probabilities(output, "binary")
        kept = np.array([r is None for r in rejected])
        found[~kept] = np.nan
        out = pd.DataFrame({f"probability_{c}": found[:, i] for i, c in enumerate(self.classes)})
        labels = (found[:, 1] >= 0.5).astype(int)
        out["prediction"] = pd.Series([int(v) if k else None for v, k in zip(labels, kept,
                                                                          strict=True)],
                                      dtype=object)
        out["rejected"] = pd.Series(rejected, dtype=object)
        return out

    def example(self) -> pd.DataFrame:
        return pd.DataFrame(_CARDIO_EXAMPLE)

    def column_kinds(self) -> dict[str, str]:
        return {c: "number" for c in CARDIO_COLUMNS}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"format": "clrpipe.pipeline.data.preprocess.cardio/1",
                                    "limits": self.limits.model_dump(), "mean": self.mean,
                                    "scale": self.scale}, indent=2) + "\n")


@dataclass(frozen=True)
class TablePreprocessing:
    """A user's table: the fitted `clrpipe.pipeline.data.tables.Preprocessor` of the split."""

    fitted: tables.Preprocessor
    kind = "table"

    @property
    def columns(self) -> tuple[str, ...]:
        return self.fitted.schema.features

    @property
    def classes(self) -> tuple:
        return tuple(self.fitted.schema.classes or ())

    @property
    def regression(self) -> bool:
        return not self.fitted.schema.is_classification

    def features(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[str | None]]:
        """Float32 features of every row (every row is scored)."""
        schema = self.fitted.schema
        frame = frame.rename(columns=lambda c: str(c).strip())
        _refuse_empty(frame, schema.features)
        missing = [c for c in schema.features if c not in frame.columns]
        if missing:
            raise ClrpipeError(f"column '{missing[0]}' missing; expected the columns "
                               f"{', '.join(schema.features)}")
        typed = frame[list(schema.features)].reset_index(drop=True).copy()
        allow = self.fitted.missing == "impute"
        for c in schema.numeric:
            typed[c] = _numbers(typed[c], c, allow)
        if not allow:
            for c in schema.categorical:
                if typed[c].isna().any():
                    row, count = _rows(typed[c].isna().to_numpy())
                    raise ClrpipeError(f"column '{c}' has {count} missing value(s) (first in "
                                       f"data row {row}); data.missing is refuse")
        x, _ = self.fitted.transform(typed)
        return x, [None] * len(typed)

    def predictions(self, output: np.ndarray, rejected: list[str | None]) -> pd.DataFrame:
        """`probability_<class>` per class and `prediction` (the label), or `prediction` in
        the target's units."""
        if self.regression:
            return pd.DataFrame({"prediction": self.fitted.decode_target(output)})
        found = probabilities(output, self.fitted.schema.task)
        out = pd.DataFrame({f"probability_{c}": found[:, i] for i, c in enumerate(self.classes)})
        out["prediction"] = pd.Series(self.fitted.decode_target(found).tolist(), dtype=object)
        return out

    def example(self) -> pd.DataFrame:
        """A typical row: the training part's numeric means and most frequent categories."""
        described = self.fitted.describe()
        row = {c: [described["means"][c]] for c in self.fitted.schema.numeric}
        row |= {c: [described["most_frequent"][c]] for c in self.fitted.schema.categorical}
        return pd.DataFrame(row)

    def column_kinds(self) -> dict[str, str]:
        schema = self.fitted.schema
        return {c: "number" if c in schema.numeric else "category" for c in schema.features}

    def save(self, path: Path) -> None:
        self.fitted.save(path)


def probabilities(output: np.ndarray, task: str) -> np.ndarray:
    """Class probabilities (n, K) from the network's output: [1 - p, p] for a sigmoid."""
    output = np.asarray(output, dtype=np.float64)
    if task == "binary":
        p = output.reshape(-1)
        return np.column_stack([1 - p, p])
    return output.reshape(len(output), -1)


def load(path: Path) -> CardioPreprocessing | TablePreprocessing:
    """What `save` wrote: cardio's JSON or a table's joblib file."""
    path = Path(path)
    if path.suffix == ".json":
        state = json.loads(path.read_text())
        if state.get("format") != "clrpipe.pipeline.data.preprocess.cardio/1":
            raise ClrpipeError(f"{path}: not a clrpipe cardio preprocessing file")
        return CardioPreprocessing(Limits(**state["limits"]), tuple(state["mean"]),
                                   tuple(state["scale"]))
    return TablePreprocessing(tables.Preprocessor.load(path))


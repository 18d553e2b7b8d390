"""A user's table (`data: table`): check, clean and infer the task (`prepare_table`), and
check a cleaned table can be split (`check_splittable`). Pure; every failure is one
`ClrpipeError` line naming the file, the column or the `data.*` key to change.

Reading is `data.table_read`, the schema and value kinds `data.table_schema`, the encoding
fitted on the training part `data.table_encode` (re-exported here: `tables.read_table`,
`tables.TableSchema`, `tables.Preprocessor`, ...).

`prepare_table`, in this order: the configured columns are checked; rows with a missing target
are dropped (``dropped_missing_target``); duplicates are dropped keeping the first row, as for
cardio: a row equal to an earlier one in the id, target and feature columns counts as
``dropped_duplicate_row``, a row repeating an earlier row's id (all id columns, none missing)
with other values as ``dropped_duplicate_id`` (without id columns only exact duplicates go);
the task is inferred unless `data.task` is set (a text or boolean target, or one whose values
are all integers with at most `data.max_classes` levels, is classification, binary with 2
classes and multiclass with more; other numbers are regression; the inference is a note);
the columns are typed and validated with a pandera schema (`frame_schema`). The categorical
columns are `data.categorical`, or when it is null the text and boolean ones (a text column
that is mostly numbers is an error instead: a stray `?` should not turn a measurement into
categories); every other feature must be numbers (booleans count as 0/1). Infinite numbers
are refused; missing ones too with `data.missing: refuse`. The cleaned frame has the numeric
columns, the categorical ones (text, 1 not 1.0) and the target last, in the file's order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pandera.errors import SchemaError, SchemaErrors

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline.data.cardio import split_minimum
from clrpipe.pipeline.data.table_encode import MAX_CATEGORIES, OTHER, Preprocessor
from clrpipe.pipeline.data.table_read import FORMATS, read_table
from clrpipe.pipeline.data.table_schema import (
    CLASSIFICATION,
    SCHEMA_KEY,
    TableSchema,
    as_text,
    frame_schema,
    integer_valued,
    is_bool,
    is_number,
    is_text,
    mlflow_keys,
    plain,
)
from clrpipe.pipeline.params import TableData

__all__ = [
    "FORMATS",
    "MIN_ROWS",
    "SCHEMA_KEY",
    "Preprocessor",
    "TableSchema",
    "check_splittable",
    "frame_schema",
    "mlflow_keys",
    "prepare_table",
    "read_table",
    "regression_minimum",
]

MIN_ROWS = 10
"""Rows a regression table needs at least (train, test and training's validation slice)."""
MIN_SIDE = 2
"""Rows each side of a regression split needs at least."""
ID_MIN_ROWS = 50
"""Rows a text column needs before a distinct value in each marks it as an identifier."""


def _row(index: Any) -> int:
    return int(index) + 1


def _columns_text(columns: list[str]) -> str:
    shown = ", ".join(columns[:30])
    return shown + (f", ... ({len(columns) - 30} more)" if len(columns) > 30 else "")


def _no_column(key: str, name: str, columns: list[str], source: str) -> ClrpipeError:
    near = [c for c in columns if c.strip().lower() == name.strip().lower()]
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return ClrpipeError(
        f"data.{key}: no column '{name}' in {source}{hint}; columns are {_columns_text(columns)}"
    )


def _check_config(frame: pd.DataFrame, cfg: TableData, source: str) -> None:
    columns = list(frame.columns)
    repeated = [c for i, c in enumerate(columns) if c in columns[:i]]
    if repeated:
        raise ClrpipeError(f"{source}: column '{repeated[0]}' appears more than once")
    if cfg.target not in columns:
        raise _no_column("target", cfg.target, columns, source)
    lists = {
        "id_columns": cfg.id_columns,
        "ignore_columns": cfg.ignore_columns,
        "categorical": cfg.categorical or [],
    }
    for key, names in lists.items():
        for name in names:
            if name not in columns:
                raise _no_column(key, name, columns, source)
        if cfg.target in names:
            raise ClrpipeError(
                f"data.{key}: '{cfg.target}' is the target (data.target); list feature "
                "columns only"
            )
    for name in lists["categorical"]:
        for key in ("id_columns", "ignore_columns"):
            if name in lists[key]:
                raise ClrpipeError(
                    f"data.categorical: '{name}' is also in data.{key}; a column is a feature "
                    "or left out, not both"
                )


def _task(
    target: pd.Series, cfg: TableData, source: str
) -> tuple[str, bool, tuple | None, pd.Series, str]:
    """The task, whether inferred, the classes, the target's values typed, and a note."""
    name, n = cfg.target, len(target)
    if is_bool(target):
        kind, values = "boolean", target.astype(bool)
    elif is_number(target):
        kind = "integer" if integer_valued(target) else "float"
        values = target.astype("int64" if kind == "integer" else float)
    elif is_text(target):
        kind, values = "text", as_text(target)
    else:
        raise ClrpipeError(
            f"data.target: column '{name}' in {source} has {target.dtype} values; expected "
            "text, boolean or numbers"
        )
    levels = int(values.nunique())
    task, note = cfg.task, ""
    if task is None:
        if kind in ("boolean", "text") or (kind == "integer" and levels <= cfg.max_classes):
            task = "binary" if levels <= 2 else "multiclass"
            note = f"{levels} {kind} {'levels' if kind == 'integer' else 'classes'}"
        elif kind == "integer":
            task = "regression"
            note = f"{levels} integer levels, more than data.max_classes={cfg.max_classes}"
        else:
            task, note = "regression", "non-integer numbers"
        note = f"task inferred: {task} ({note} in '{name}'); set data.task to override"
    elif task == "regression" and kind in ("text", "boolean"):
        first = plain(values.iloc[0])
        raise ClrpipeError(
            f"data.task: regression needs a numeric target, but '{name}' in {source} has "
            f"{kind} values (e.g. {first!r}); set data.task to binary or multiclass, or null "
            "to infer"
        )
    elif task in CLASSIFICATION and kind == "float":
        first = values[values != np.round(values)].iloc[0]
        raise ClrpipeError(
            f"data.task: {task} needs class labels (text, boolean or integers), but '{name}' "
            f"in {source} has non-integer numbers (e.g. {first:g}); set data.task to regression, "
            "or null to infer"
        )
    if task == "regression":
        if levels < 2:
            raise ClrpipeError(
                f"data.target: column '{name}' in {source} has one value "
                f"({float(values.iloc[0]):g}) in all {n} rows; expected at least 2 distinct "
                "values"
            )
        return task, cfg.task is None, None, values.astype(float), note
    classes = tuple(sorted(plain(v) for v in values.unique()))
    if levels < 2:
        raise ClrpipeError(
            f"data.target: column '{name}' in {source} has one class ({classes[0]!r}) in all "
            f"{n} rows; expected at least 2 classes"
        )
    if task == "binary" and levels > 2:
        shown = ", ".join(map(repr, classes[:5])) + (", ..." if levels > 5 else "")
        raise ClrpipeError(
            f"data.task: binary needs 2 classes, but '{name}' in {source} has {levels} "
            f"({shown}); set data.task to multiclass, or null to infer"
        )
    return task, cfg.task is None, classes, values, note


def _numbers(s: pd.Series, column: str, source: str, why: str) -> pd.Series:
    """A feature column as floats, or a one-line error naming its first non-number."""
    if is_bool(s):
        return s.map(float, na_action="ignore").astype(float)
    if is_number(s):
        return s.astype(float)
    if is_text(s):
        text = s.astype("str").str.strip()
        parsed = pd.to_numeric(text.where(s.notna()), errors="coerce")
        bad = s.notna() & parsed.isna()
        if not bad.any():
            return parsed.astype(float)
        first = bad.idxmax()
        raise ClrpipeError(
            f"{source}: column '{column}' {why} ({int(bad.sum())} non-number value(s), first in "
            f"data row {_row(first)}: {s[first]!r}); list it in data.categorical to one-hot "
            "encode it, or in data.ignore_columns to leave it out"
        )
    raise ClrpipeError(
        f"{source}: column '{column}' has {s.dtype} values, not numbers; list it in "
        "data.categorical to one-hot encode it, or in data.ignore_columns to leave it out"
    )


def _id_like(s: pd.Series) -> bool:
    """A text column holding a different value in every row (ID_MIN_ROWS rows or more, gaps
    aside): an identifier, not a feature."""
    values = s.dropna()
    return len(values) >= ID_MIN_ROWS and values.nunique() == len(values)


def _mostly_numbers(s: pd.Series) -> bool:
    values = s.dropna()
    parsed = pd.to_numeric(values.astype("str").str.strip(), errors="coerce")
    return len(values) > 0 and parsed.notna().sum() >= 0.5 * len(values) and parsed.isna().any()


def prepare_table(
    frame: pd.DataFrame, cfg: TableData, source: str
) -> tuple[pd.DataFrame, TableSchema, dict, list[str]]:
    """Check the table against `cfg`, drop unusable and duplicate rows, infer the task and
    type the columns. Returns the cleaned frame (numeric, categorical, then the target
    column), its schema, a report (JSON-able counts) and notes for the user."""
    frame = frame.reset_index(drop=True)  # row labels are data rows (1-based in messages)
    frame.columns = [str(c) for c in frame.columns]
    _check_config(frame, cfg, source)
    target, ids = cfg.target, list(cfg.id_columns)
    rows_in = len(frame)
    notes: list[str] = []

    no_target = frame[target].isna()
    if no_target.all():
        raise ClrpipeError(
            f"data.target: column '{target}' in {source} has no values (all {rows_in} rows "
            "missing); expected a target in every row"
        )
    frame = frame.loc[~no_target]
    compared = [c for c in frame.columns if c not in cfg.ignore_columns]
    same_row = frame.duplicated(subset=compared, keep="first")
    if ids:
        same_id = frame[ids].duplicated(keep="first") & frame[ids].notna().all(axis=1)
        same_id &= ~same_row
    else:
        same_id = same_row & False
    frame = frame.loc[~(same_row | same_id)]
    dropped = {
        "dropped_missing_target": int(no_target.sum()),
        "dropped_duplicate_row": int(same_row.sum()),
        "dropped_duplicate_id": int(same_id.sum()),
    }

    task, inferred, classes, target_values, note = _task(frame[target], cfg, source)
    if note:
        notes.append(note)

    left_out = {target, *ids, *cfg.ignore_columns}
    features = [c for c in frame.columns if c not in left_out]
    if not features:
        raise ClrpipeError(
            f"{source}: no feature columns left (every column is data.target, in "
            "data.id_columns or in data.ignore_columns)"
        )
    id_like: dict[str, str] = {}
    if cfg.categorical is not None:
        declared = set(cfg.categorical)
        categorical = [c for c in features if c in declared]
    else:
        categorical = []
        for c in features:
            if is_bool(frame[c]):
                categorical.append(c)
            elif is_text(frame[c]):
                if _id_like(frame[c]):
                    id_like[c] = f"id-like: {frame[c].nunique()} distinct values in as many rows"
                    notes.append(f"column '{c}' looks like an identifier (a distinct value in "
                                 "every row): left out; list it in data.categorical to use it")
                    continue
                if _mostly_numbers(frame[c]):
                    _numbers(frame[c], c, source, "is mostly numbers but not all")
                categorical.append(c)
        features = [c for c in features if c not in id_like]
        if not features:
            raise ClrpipeError(f"{source}: no feature columns left (the only ones look like "
                               f"identifiers: {', '.join(id_like)}); list them in "
                               "data.categorical to use them")
    numeric = [c for c in features if c not in categorical]
    why = "is not numeric" + (" and not in data.categorical" if cfg.categorical is not None else "")
    typed = {c: _numbers(frame[c], c, source, why) for c in numeric}
    typed |= {c: as_text(frame[c]) for c in categorical}

    missing = {c: int(typed[c].isna().sum()) for c in features}
    for c in features:
        gaps = typed[c].isna()
        if gaps.all():
            raise ClrpipeError(
                f"{source}: column '{c}' has no values (all {len(gaps)} rows missing); list it "
                "in data.ignore_columns"
            )
        if cfg.missing == "refuse" and gaps.any():
            raise ClrpipeError(
                f"{source}: column '{c}' has {int(gaps.sum())} missing value(s) (first in data "
                f"row {_row(gaps.idxmax())}); data.missing is refuse (set data.missing=impute to "
                "fill them from the training part)"
            )
    for c in [*numeric, *([target] if task == "regression" else [])]:
        values = typed[c] if c != target else target_values
        infinite = np.isinf(values.to_numpy(dtype=float))
        if infinite.any():
            raise ClrpipeError(
                f"{source}: column '{c}' has {int(infinite.sum())} infinite value(s) (first in "
                f"data row {_row(values.index[infinite.argmax()])}); expected finite numbers"
            )
    encoding = {c: "number" for c in numeric}
    for c in categorical:
        levels = int(typed[c].nunique())
        encoding[c] = (f"one-hot, {levels} values" if levels <= MAX_CATEGORIES else
                       f"one-hot, the {MAX_CATEGORIES - 1} most frequent of {levels} values in "
                       f"training + {OTHER} (the rest and unseen values)")
        if levels > MAX_CATEGORIES:
            notes.append(f"column '{c}' has {levels} distinct values: one-hot encoded as its "
                         f"{MAX_CATEGORIES - 1} most frequent and {OTHER}")
    encoding |= {c: f"left out ({why})" for c, why in id_like.items()}
    gaps = {c: n for c, n in missing.items() if n}
    if gaps:
        shown = ", ".join(f"{c} {n}" for c, n in gaps.items())
        notes.append(f"missing values in {len(gaps)} column(s) ({shown}): imputed from the "
                     "training part")
    if dropped["dropped_missing_target"]:
        notes.append(f"dropped {dropped['dropped_missing_target']} row(s) with no '{target}'")

    schema = TableSchema(
        target=target, task=task, task_inferred=inferred, numeric=tuple(numeric),
        categorical=tuple(categorical), classes=classes,
    )
    out = pd.DataFrame({**typed, target: target_values}, index=frame.index)
    try:
        out = frame_schema(schema, cfg.missing).validate(out)
    except SchemaErrors as errs:  # pandera groups coercion failures even when not lazy
        raise ClrpipeError(_schema_line(errs.schema_errors[0], source)) from None
    except SchemaError as err:
        raise ClrpipeError(_schema_line(err, source)) from None
    out = out.reset_index(drop=True)
    report = {
        "rows_in": rows_in,
        "rows_out": len(out),
        **dropped,
        "rows_dropped": sum(dropped.values()),
        "missing": missing,
        "task": task,
        "task_inferred": inferred,
        "target": target,
        "numeric": list(numeric),
        "categorical": list(categorical),
        "encoding": encoding,
        "classes": None if classes is None else list(classes),
        "class_counts": None if classes is None else {
            str(c): int((out[target] == c).sum()) for c in classes
        },
    }
    return out, schema, report, notes


def _schema_line(err: SchemaError, source: str) -> str:
    column = getattr(err.schema, "name", None) or "?"
    cases = err.failure_cases
    got = ""
    if cases is not None and len(cases):
        got = f", got {cases['failure_case'].iloc[0]!r}"
    return f"{source}: column '{column}' failed the table schema ({first_line(err)}){got}"


# --- splitting ------------------------------------------------------------------------------------


def regression_minimum(test_size: float) -> int:
    """Rows a regression table needs: both sides of the split at least `MIN_SIDE` rows
    (sklearn rounds the test part up), and `MIN_ROWS` in all."""
    n = 2 * MIN_SIDE
    while math.ceil(test_size * n) < MIN_SIDE or n - math.ceil(test_size * n) < MIN_SIDE:
        n += 1
    return max(n, MIN_ROWS)


def check_splittable(frame: pd.DataFrame, schema: TableSchema, test_size: float,
                     source: str) -> None:
    """Refuse, in one line, a table too small to split with `test_size` (stratified by class
    for classification)."""
    n = len(frame)
    if not schema.is_classification:
        minimum = regression_minimum(test_size)
        if n < minimum:
            raise ClrpipeError(
                f"{source}: too few rows to split ({n} rows); a split with "
                f"split.test_size={test_size:g} needs at least {minimum} rows so that train "
                f"and test get at least {MIN_SIDE} each and training keeps a validation slice"
            )
        return
    minimum = split_minimum(test_size)
    counts = frame[schema.target].value_counts()
    short = [(c, int(counts.get(c, 0))) for c in schema.classes if counts.get(c, 0) < minimum]
    if not short:
        return
    shown = ", ".join(f"{count} of class {c!r}" for c, count in short[:5])
    more = f" and {len(short) - 5} more short classes" if len(short) > 5 else ""
    raise ClrpipeError(
        f"{source}: too few rows to split ({n} rows: {shown}{more}); a stratified split with "
        f"split.test_size={test_size:g} needs at least {minimum} rows of each "
        f"'{schema.target}' class ({minimum * len(schema.classes)} in all) so that train and "
        "test both get every class"
    )

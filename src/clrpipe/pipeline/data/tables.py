"""A user's table (`data: table`): read, check, clean, infer the task, preprocess. Pure.

No file or network I/O happens here (`Preprocessor.save`/`load` aside); the stages read the
bytes and write the results. Every failure is one `ClrpipeError` line naming the file, the
column or the `data.*` key to change.

`read_table`: CSV (`,`), TSV (tab) or Parquet, from `data.format` or the file's suffix
(`.csv`, `.tsv`/`.tab`, `.parquet`/`.pq`, each optionally `.gz`/`.bz2`/`.xz`; gzip, bzip2 and xz
content is decompressed whatever the suffix). Text tables are UTF-8 with a header line; UTF-16,
zip archives, Excel workbooks and binary files are refused with what to do (`data.cardio`'s
detection). Cells pandas reads as missing (blank, `NA`, `NaN`, `null`, `None`, `#N/A`, ...) are
missing values; text cells are trimmed.

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

`Preprocessor`: fitted on the training part only; numbers -> median imputation (with a 0/1
`missing:<column>` indicator for each column that had gaps in training, left unscaled) ->
standardization; categories -> most frequent imputation -> one-hot (`<column>=<value>`, the
training categories only; an unseen one is all zeros and counted).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import math
import zlib
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline.data.cardio import decode_text, not_utf8_text, split_minimum
from clrpipe.pipeline.params import TASKS, TableData

__all__ = [
    "FORMATS",
    "MIN_ROWS",
    "SCHEMA_KEY",
    "Preprocessor",
    "TableSchema",
    "check_splittable",
    "frame_schema",
    "prepare_table",
    "read_table",
]

SCHEMA_KEY = "clrpipe_table_schema"
"""Where `prepare` puts the table's schema for `split`: the prepared parquet's `attrs`."""
FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSED_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz", ".zst")
SEPARATORS = {"csv": ",", "tsv": "\t"}
MIN_ROWS = 10
"""Rows a regression table needs at least (train, test and training's validation slice)."""
MIN_SIDE = 2
"""Rows each side of a regression split needs at least."""
CLASSIFICATION = ("binary", "multiclass")
_DECOMPRESS = (  # magic bytes, name, decompressor
    (b"\x1f\x8b", "gzip", gzip.decompress),
    (b"BZh", "bzip2", bz2.decompress),
    (b"\xfd7zXZ\x00", "xz", lzma.decompress),
)


# --- the schema ---------------------------------------------------------------------------------


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


# --- reading --------------------------------------------------------------------------------------


def read_table(raw: bytes, source: str, format: str | None) -> pd.DataFrame:
    """The table in `raw` (the bytes of the file `source`) as a frame, columns as in its header.

    `format` (`data.format`: csv, tsv or parquet) or, when None, the suffix of `source` says how
    to read it. Anything that is not such a table is a one-line error saying what was expected."""
    kind = format if format is not None else _format_of(raw, source)
    if kind not in (*SEPARATORS, "parquet"):
        raise ClrpipeError(f"data.format: expected one of csv, tsv, parquet, got {kind!r}")
    if not raw.strip():
        raise ClrpipeError(f"{source}: empty file; expected a header line and data rows")
    raw = _decompressed(raw, source, kind)
    frame = _read_parquet(raw, source) if kind == "parquet" else _read_text(raw, source, kind)
    names = [str(c).strip() for c in frame.columns]
    repeated = [c for i, c in enumerate(names) if c in names[:i]]
    if repeated:
        raise ClrpipeError(f"{source}: column '{repeated[0]}' appears more than once")
    frame.columns = names
    if frame.shape[1] == 0:
        raise ClrpipeError(f"{source}: no columns; expected a table with a header")
    if frame.empty:
        raise ClrpipeError(f"{source}: no data rows after the header")
    return frame


def _format_of(raw: bytes, source: str) -> str:
    path = PurePath(source)
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    if suffixes and suffixes[-1] in FORMATS:
        return FORMATS[suffixes[-1]]
    named = "".join(path.suffixes[max(len(suffixes) - 1, 0):])
    shown = f"suffix {named!r}" if named else "no suffix"
    hint = ""
    if raw.startswith(b"PAR1"):
        hint = " (the content is Parquet: set data.format=parquet)"
    elif "Excel" in (not_utf8_text(raw, source) or ""):
        hint = " (it is an Excel workbook: export the sheet as CSV)"
    raise ClrpipeError(
        f"{source}: unknown table kind ({shown}); expected .csv, .tsv, .tab, .parquet or .pq "
        f"(optionally .gz, .bz2 or .xz), or set data.format to csv, tsv or parquet{hint}"
    )


def _decompressed(raw: bytes, source: str, kind: str) -> bytes:
    for magic, name, decompress in _DECOMPRESS:
        if raw.startswith(magic) and (name != "bzip2" or raw[3:4].isdigit()):
            try:
                raw = decompress(raw)
            except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as err:
                raise ClrpipeError(
                    f"{source}: {name}-compressed but does not decompress ({first_line(err)}); "
                    f"expected a complete {name} file"
                ) from None
            if not raw.strip():
                raise ClrpipeError(
                    f"{source}: empty file once decompressed; expected a header line and data "
                    "rows"
                )
            return raw
    return raw


def _sibling(source: str, kind: str) -> str:
    """A file name next to `source` for a converted copy (never `source` itself)."""
    path = PurePath(source)
    while path.suffix.lower() in COMPRESSED_SUFFIXES:
        path = path.with_suffix("")
    if str(path) == source:
        path = path.with_name(f"{path.stem}-utf8{path.suffix or '.' + kind}")
    return str(path)


def _adapted(message: str, source: str, kind: str) -> str:
    """`clrpipe.pipeline.data.cardio`'s cardio wording made right for a user's CSV or TSV table."""
    label = kind.upper()
    return (
        message.replace("cardio_train.csv", _sibling(source, kind))
        .replace("(UTF-8, ';' or ',' separated)", "(UTF-8, ',' separated)")
        .replace("extract the CSV first", f"extract the {label} first")
        .replace("CSV table", f"{label} table")
        .replace(" and use that file", " and set data.raw to that file")
    )


def _read_text(raw: bytes, source: str, kind: str) -> pd.DataFrame:
    label, separator = kind.upper(), SEPARATORS[kind]
    if raw.startswith(b"PAR1"):
        raise ClrpipeError(
            f"{source}: a Parquet file, not a {label} table; set data.format=parquet (or name "
            "the file .parquet)"
        )
    try:
        text = decode_text(raw, source)
    except ClrpipeError as err:
        raise ClrpipeError(_adapted(str(err), source, kind)) from None
    text = text.lstrip("\ufeff")
    header = text.split("\n", 1)[0]
    if not header.strip():
        raise ClrpipeError(
            f"{source}: the first line is blank; expected a header line naming the columns"
        )
    names = [name.strip() for name in next(csv.reader([header], delimiter=separator))]
    if "" in names:
        raise ClrpipeError(
            f"{source}: column {names.index('') + 1} of the header has no name; expected a "
            "header line naming every column"
        )
    repeated = [c for i, c in enumerate(names) if c in names[:i]]
    if repeated:
        raise ClrpipeError(f"{source}: column '{repeated[0]}' appears more than once")
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=separator, skipinitialspace=True, low_memory=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise ClrpipeError(
            f"{source}: not a {separator!r}-separated {label} table ({first_line(err)}); "
            "expected a header line and rows of as many fields (set data.format if the file "
            "is another kind)"
        ) from None
    if not frame.index.equals(pd.RangeIndex(len(frame))):  # pandas took fields as an index
        raise ClrpipeError(
            f"{source}: the data rows have more fields than the header's {len(names)} names; "
            "expected a header line naming every column (or no trailing separator)"
        )
    if len(names) == frame.shape[1]:
        frame.columns = names
    if frame.shape[1] == 1:
        for other, other_kind in (("\t", "tsv"), (",", "csv")):
            if other != separator and other in header:
                raise ClrpipeError(
                    f"{source}: one column read with separator {separator!r}, but the header "
                    f"has {other!r}; set data.format={other_kind}"
                )
        if ";" in header:
            raise ClrpipeError(
                f"{source}: one column read with separator {separator!r}, but the header has "
                "';'; re-save the table ',' separated (csv) or tab separated (tsv)"
            )
    for column in frame.columns:
        if _is_text(frame[column]) and not _is_bool(frame[column]):
            values = frame[column].astype("str").str.strip()
            frame[column] = values.mask(frame[column].isna() | (values == ""))
    return frame


def _read_parquet(raw: bytes, source: str) -> pd.DataFrame:
    if not raw.startswith(b"PAR1"):
        looks = " (it looks like text: set data.format=csv or tsv)"
        if not_utf8_text(raw, source) is not None or b"\x00" in raw[:4096]:
            looks = ""
        raise ClrpipeError(
            f"{source}: not a Parquet file (it does not start with PAR1){looks}; expected "
            "Parquet (data.format=parquet or a .parquet/.pq name)"
        )
    try:
        frame = pd.read_parquet(io.BytesIO(raw))
    except Exception as err:  # pyarrow's errors are not one family
        raise ClrpipeError(
            f"{source}: not a readable Parquet file ({first_line(err)}); expected a complete "
            "Parquet table"
        ) from None
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()  # a saved index is data: keep it as a column
    return frame.reset_index(drop=True)


# --- preparing ------------------------------------------------------------------------------------


def _is_bool(s: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(s.dtype):
        return True
    if pd.api.types.is_object_dtype(s.dtype):
        values = s.dropna()
        return len(values) > 0 and all(isinstance(v, bool | np.bool_) for v in values)
    return False


def _is_text(s: pd.Series) -> bool:
    return (
        pd.api.types.is_object_dtype(s.dtype)
        or pd.api.types.is_string_dtype(s.dtype)
        or isinstance(s.dtype, pd.CategoricalDtype)
    )


def _is_number(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)


def _integer_valued(values: pd.Series) -> bool:
    v = values.dropna().to_numpy(dtype=float)
    return bool(len(v)) and bool(np.all(np.isfinite(v))) and bool(np.all(v == np.round(v)))


def _as_text(s: pd.Series) -> pd.Series:
    """Category values as text (`1`, not `1.0`; `True`), missing ones kept missing."""
    present = s.notna()
    if _is_bool(s):
        values = s.map(lambda v: str(bool(v)), na_action="ignore")
    elif _is_number(s) and _integer_valued(s):
        values = s.map(lambda v: str(int(v)), na_action="ignore")
    else:
        values = s.map(lambda v: str(v).strip(), na_action="ignore")
    values = values.astype("str")
    return values.mask(~present | (values == ""))


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
    if _is_bool(target):
        kind, values = "boolean", target.astype(bool)
    elif _is_number(target):
        kind = "integer" if _integer_valued(target) else "float"
        values = target.astype("int64" if kind == "integer" else float)
    elif _is_text(target):
        kind, values = "text", _as_text(target)
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
        first = _plain(values.iloc[0])
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
    classes = tuple(sorted(_plain(v) for v in values.unique()))
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


def _plain(value: Any) -> str | int | bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)  # 1.0 read back from a float column is the class 1
    return str(value)


def _numbers(s: pd.Series, column: str, source: str, why: str) -> pd.Series:
    """A feature column as floats, or a one-line error naming its first non-number."""
    if _is_bool(s):
        return s.map(float, na_action="ignore").astype(float)
    if _is_number(s):
        return s.astype(float)
    if _is_text(s):
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
    if cfg.categorical is not None:
        declared = set(cfg.categorical)
        categorical = [c for c in features if c in declared]
    else:
        categorical = []
        for c in features:
            if _is_bool(frame[c]):
                categorical.append(c)
            elif _is_text(frame[c]):
                if _mostly_numbers(frame[c]):
                    _numbers(frame[c], c, source, "is mostly numbers but not all")
                categorical.append(c)
    numeric = [c for c in features if c not in categorical]
    why = "is not numeric" + (" and not in data.categorical" if cfg.categorical is not None else "")
    typed = {c: _numbers(frame[c], c, source, why) for c in numeric}
    typed |= {c: _as_text(frame[c]) for c in categorical}

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
    for c in categorical:
        levels, present = int(typed[c].nunique()), int(typed[c].notna().sum())
        if levels > 20 and levels > 0.5 * present:
            notes.append(
                f"column '{c}' has {levels} distinct values in {present} rows, one-hot encoded "
                "as that many features; if it is an identifier or free text, list it in "
                "data.id_columns or data.ignore_columns"
            )
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


# --- preprocessing --------------------------------------------------------------------------------


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
        categories = self._encoder.categories_ if self._encoder is not None else []
        self.categories: dict[str, list[str]] = {
            c: [str(v) for v in cats] for c, cats in zip(schema.categorical, categories,
                                                          strict=True)
        }
        self.features: list[str] = [
            *schema.numeric,
            *(f"missing:{c}" for c in self.indicators),
            *(f"{c}={v}" for c in schema.categorical for v in self.categories[c]),
        ]

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
                handle_unknown="ignore", sparse_output=False, dtype=np.float32
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
        columns = [_as_text(frame[c]).astype(object) for c in schema.categorical]
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
                known = set(self.categories[c])
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
        labels = pd.Series(values).map(_plain) if len(values) else pd.Series([], dtype=object)
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

"""The cardio table: parse, validate, repair, add features. Pure: bytes and frames in, frames out.

No file or network I/O happens here; the `prepare` stage reads the bytes and writes the results.

Input: UTF-8 text (an optional BOM). UTF-16/UTF-32 text, compressed files (gzip, bzip2, xz,
zstd), zip archives, Excel workbooks and Parquet files are recognised and refused with what to do
(re-save as UTF-8, decompress, extract, export); they are not read transparently, so `data.raw` and
its `data.sha256` always name the CSV itself.

Validation is a pandera schema (`RAW_SCHEMA`): every required column present and numeric, no
missing values in any column, the `id` column included (clrpipe refuses them rather than impute:
the source table has none, so a gap means a broken export, and a guessed blood pressure would be
worse than a clear error; blank cells and the usual spellings of a missing number, `NaN`, `NA`,
`null`, `None`, `#N/A`..., count as missing), finite numbers, categorical codes within their
documented sets, and both target classes present.

Repair rules (`repair`), applied in this order, each counted in the report:

1. Duplicates are dropped, keeping the first row of each: a row equal to an earlier one in every
   column, `id` included when there is one, counts as ``dropped_duplicate_row``; a row whose `id`
   repeats an earlier row's but whose values differ counts as ``dropped_duplicate_id`` (one
   patient, conflicting records: the first is kept, as for exact copies, so the result does not
   depend on which conflicting record looks more plausible). Values compare as numbers (``120``
   equals ``120.0``), ids as written (trimmed). Without an `id` column only exact duplicate rows
   are dropped. This runs before the split, so no patient is in both train and test. Rows with
   different ids and equal values are different patients and are kept (the real table has 24).
2. A negative blood pressure is a sign typo: take its absolute value.
3. A blood pressure above its plausible maximum has extra digits (``1100`` for 110, ``11000`` for
   110, ``16020`` for 160): divide by 10 until it is at most the maximum (counted as 10x or 100x).
4. A blood pressure between a tenth of its plausible minimum and the minimum was written in cmHg
   (``12`` for 120 mmHg): multiply by 10. Smaller values (0, 1) are left for rule 6 to drop.
5. Diastolic above systolic (``ap_lo > ap_hi``) is a transposed entry: swap them.
6. Rows still implausible are dropped, each for its first failing reason: blood pressures outside
   the limits, pulse pressure <= 0 (``ap_hi == ap_lo``), height or weight outside the adult limits
   (55 cm and 10 kg are not adult measurements and no unit slip explains them reliably), BMI outside
   its limits.

``rows_dropped`` counts every dropped row (duplicates included): ``rows_in = rows_out +
rows_dropped``.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.params import Limits

__all__ = [
    "BINARY",
    "EXPECTED_TEXT",
    "FEATURES",
    "ID",
    "IGNORED_COLUMNS",
    "MISSING_TOKENS",
    "RAW_SCHEMA",
    "REQUIRED_COLUMNS",
    "TARGET",
    "add_features",
    "check_splittable",
    "decode_text",
    "drop_duplicates",
    "features",
    "implausible",
    "not_utf8_text",
    "parse_csv",
    "prepare",
    "repair",
    "repair_values",
    "split_minimum",
    "standardize",
    "validate",
]

TARGET = "cardio"
ID = "id"
IGNORED_COLUMNS = (ID,)  # read for the duplicate check (repair rule 1), never a feature
# Cells that mean "no value" (compared lower-cased): pandas' default NA spellings. Any spelling
# of NaN ("nan", "-NaN") is one too, because it would otherwise be coerced to a float NaN.
MISSING_TOKENS = frozenset(
    {"", "na", "n/a", "nan", "-nan", "+nan", "null", "none", "<na>", "#n/a", "#n/a n/a", "#na",
     "-1.#ind", "1.#ind", "-1.#qnan", "1.#qnan"}
)
BINARY = (0, 1)

RAW_SCHEMA = pa.DataFrameSchema(
    {
        "age": pa.Column(float, pa.Check.gt(0), coerce=True),
        "gender": pa.Column(float, pa.Check.isin((1, 2)), coerce=True),
        "height": pa.Column(float, coerce=True),
        "weight": pa.Column(float, coerce=True),
        "ap_hi": pa.Column(float, coerce=True),
        "ap_lo": pa.Column(float, coerce=True),
        "cholesterol": pa.Column(float, pa.Check.isin((1, 2, 3)), coerce=True),
        "gluc": pa.Column(float, pa.Check.isin((1, 2, 3)), coerce=True),
        "smoke": pa.Column(float, pa.Check.isin(BINARY), coerce=True),
        "alco": pa.Column(float, pa.Check.isin(BINARY), coerce=True),
        "active": pa.Column(float, pa.Check.isin(BINARY), coerce=True),
        TARGET: pa.Column(float, pa.Check.isin(BINARY), coerce=True),
    },
    checks=pa.Check(
        lambda df: df[TARGET].nunique() == 2,
        error="both classes 0 and 1",
        name="both_classes",
    ),
    strict=False,
)
REQUIRED_COLUMNS = tuple(RAW_SCHEMA.columns)

EXPECTED_TEXT = {
    "gender": "1 (women) or 2 (men)",
    "cholesterol": "1, 2 or 3",
    "gluc": "1, 2 or 3",
    "age": "a positive age in days",
}

FEATURES = (
    "age_years",
    "male",
    "height",
    "weight",
    "bmi",
    "ap_hi",
    "ap_lo",
    "pulse_pressure",
    "mean_arterial_pressure",
    "cholesterol",
    "gluc",
    "smoke",
    "alco",
    "active",
)


def parse_csv(raw: bytes, source: str) -> tuple[pd.DataFrame, list[str]]:
    """Parse the raw table: `;` or `,` separated, any line ending, headers with stray spaces,
    columns in any order. Returns the required columns and notes (e.g. ignored extra columns)."""
    text = decode_text(raw, source)
    header = text.lstrip("\ufeff").split("\n", 1)[0]
    if not header.strip():
        raise ClrpipeError(f"{source}: empty file; expected a header line and data rows")
    separator = ";" if header.count(";") >= header.count(",") else ","
    try:
        frame = pd.read_csv(
            io.StringIO(text.lstrip("\ufeff")),
            sep=separator,
            header=None,
            skipinitialspace=True,
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_MINIMAL,
        )
    except (pd.errors.ParserError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise ClrpipeError(f"{source}: not a '{separator}'-separated table ({first})") from None
    frame.columns = [str(c).strip().lower() for c in frame.iloc[0]]
    frame = frame.iloc[1:].reset_index(drop=True)
    duplicated = frame.columns[frame.columns.duplicated()].unique().tolist()
    if duplicated:
        raise ClrpipeError(f"{source}: column '{duplicated[0]}' appears more than once")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ClrpipeError(
            f"{source}: missing column(s) {', '.join(repr(c) for c in missing)}; expected "
            f"{separator.join(REQUIRED_COLUMNS)} (separated by ';' or ',')"
        )
    if frame.empty:
        raise ClrpipeError(f"{source}: no data rows after the header")
    notes = []
    extra = [c for c in frame.columns if c not in REQUIRED_COLUMNS and c not in IGNORED_COLUMNS]
    if extra:
        notes.append(f"{source}: ignoring extra column(s) {', '.join(extra)}")
    kept = [ID, *REQUIRED_COLUMNS] if ID in frame.columns else list(REQUIRED_COLUMNS)
    frame = frame[kept].apply(lambda col: col.str.strip())
    return frame, notes


def decode_text(raw: bytes, source: str) -> str:
    refused = not_utf8_text(raw, source)
    if refused:
        raise ClrpipeError(f"{source}: {refused}")
    if b"\x00" in raw[:65536]:
        raise ClrpipeError(f"{source}: binary content (NUL byte); expected a text CSV table")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ClrpipeError(
            f"{source}: not UTF-8 text (byte {err.start}); expected a text CSV table "
            "(re-save it as UTF-8)"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


_RESAVE = "re-save it as UTF-8 (e.g. iconv -f {encoding} -t UTF-8 {source} > cardio_train.csv)"
_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (b"\xff\xfe\x00\x00", "UTF-32", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32", "UTF-32"),
    (b"\xff\xfe", "UTF-16", "UTF-16"),
    (b"\xfe\xff", "UTF-16", "UTF-16"),
)
_COMPRESSED = (  # magic bytes, name, command that decompresses to stdout
    (b"\x1f\x8b", "gzip", "gzip -dc"),
    (b"BZh", "bzip2", "bzip2 -dc"),
    (b"\xfd7zXZ\x00", "xz", "xz -dc"),
    (b"\x28\xb5\x2f\xfd", "zstd", "zstd -dc"),
)


def not_utf8_text(raw: bytes, source: str) -> str | None:
    """What a recognisable non-UTF-8 input is and what to do about it, or None."""
    for bom, name, encoding in _BOMS:
        if raw.startswith(bom):
            return (
                f"{name} text (byte-order mark {bom.hex(' ').upper()}); expected UTF-8: "
                + _RESAVE.format(encoding=encoding, source=source)
            )
    for magic, name, command in _COMPRESSED:
        if raw.startswith(magic) and (name != "bzip2" or raw[3:4].isdigit()):
            return (
                f"{name}-compressed (starts with {magic.hex(' ').upper()}), not a CSV table; "
                f"decompress it first ({command} {source} > cardio_train.csv) and use that file"
            )
    if raw.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        names = _zip_members(raw)
        if any(name.startswith("xl/") for name in names):
            return (
                "an Excel workbook, not a CSV table; export the sheet as CSV (UTF-8, ';' or "
                "',' separated) and use that file"
            )
        inside = f" containing {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
        return (
            f"a zip archive{inside if names else ''} (starts with 50 4B), not a CSV table; "
            f"extract the CSV first (unzip {source}) and use that file"
        )
    if raw.startswith(b"PAR1"):
        return "a Parquet file, not a CSV table; expected the raw CSV table"
    utf16 = _utf16_without_bom(raw[:4096])
    if utf16:
        return (
            f"UTF-16 text without a byte-order mark ({utf16}, every other byte NUL); expected "
            f"UTF-8: " + _RESAVE.format(encoding=utf16, source=source)
        )
    return None


def _utf16_without_bom(head: bytes) -> str | None:
    """UTF-16LE/BE when text is NUL-interleaved (ASCII written as UTF-16), else None."""
    head = head[: len(head) // 2 * 2]
    if len(head) < 8:
        return None
    even, odd = head[0::2], head[1::2]
    for name, zeros, chars in (("UTF-16LE", odd, even), ("UTF-16BE", even, odd)):
        if zeros.count(0) >= 0.9 * len(zeros) and chars.count(0) <= 0.1 * len(chars):
            return name
    return None


def _zip_members(raw: bytes) -> list[str]:
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            return [name for name in archive.namelist() if not name.endswith("/")]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return []


def validate(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check the parsed table against `RAW_SCHEMA` and return it with numeric dtypes (the `id`
    column, when there is one, stays text: it is only compared)."""
    missing = frame.apply(lambda col: col.str.lower().isin(MISSING_TOKENS))
    if missing.to_numpy().any():
        column = frame.columns[missing.any().to_numpy()][0]
        rows = np.flatnonzero(missing[column].to_numpy())
        first = frame[column].iloc[rows[0]]
        shown = repr(first) if first else "blank"
        expected = "an id" if column == ID else "a number"
        raise ClrpipeError(
            f"{source}: column '{column}' has {len(rows)} missing value(s) (first in data row "
            f"{rows[0] + 1}: {shown}); expected {expected} in every row (clrpipe does not impute)"
        )
    try:
        checked = RAW_SCHEMA.validate(frame)
    except SchemaError as err:
        raise ClrpipeError(_describe(err, source, frame)) from None
    except SchemaErrors as errs:  # pandera groups type-coercion failures even when not lazy
        raise ClrpipeError(_describe(errs.schema_errors[0], source, frame)) from None
    for column in REQUIRED_COLUMNS:
        infinite = np.flatnonzero(~np.isfinite(checked[column].to_numpy(dtype=float)))
        if len(infinite):
            raise ClrpipeError(
                f"{source}: column '{column}' expected finite numbers, got "
                f"{frame[column].iloc[infinite[0]]!r} (first in data row {infinite[0] + 1}) in "
                f"{len(infinite)} row(s)"
            )
    return checked


def _describe(err: SchemaError, source: str, frame: pd.DataFrame | None = None) -> str:
    """One line for a schema failure; the value is shown as written in the file when the row is
    known (`'3'`, not pandera's `np.float64(3.0)`)."""
    column = getattr(err.schema, "name", None)
    cases = err.failure_cases
    if column is None or column == RAW_SCHEMA.name:
        return f"{source}: column '{TARGET}' expected {err.check.error}, found only one class"
    first_value, first_row = "?", None
    if cases is not None and len(cases):
        first_value = cases["failure_case"].iloc[0]
        index = cases["index"].iloc[0] if "index" in cases else None
        first_row = None if index is None or pd.isna(index) else int(index) + 1
    where = f" (first in data row {first_row})" if first_row is not None else ""
    if frame is not None and first_row is not None and column in frame.columns:
        first_value = frame[column].iloc[first_row - 1]
    if err.reason_code is not None and "COERC" in str(err.reason_code).upper():
        expected = "numbers"
    else:
        expected = EXPECTED_TEXT.get(column, "0 or 1")
    count = len(cases) if cases is not None else 1
    return (
        f"{source}: column '{column}' expected {expected}, got {first_value!r}{where}"
        f" in {count} row(s)"
    )


def repair(frame: pd.DataFrame, limits: Limits) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply the documented repair rules; return the kept rows and a count for every rule."""
    report: dict[str, int] = {"rows_in": len(frame)}
    df, same_row, same_id = drop_duplicates(frame)
    report["dropped_duplicate_row"] = same_row
    report["dropped_duplicate_id"] = same_id
    df, counts = repair_values(df, limits)
    report.update(counts)
    dropped = pd.Series(False, index=df.index)
    for name, mask in implausible(df, limits).items():
        report[name] = int((mask & ~dropped).sum())
        dropped |= mask
    report["rows_dropped"] = same_row + same_id + int(dropped.sum())
    report["rows_out"] = int((~dropped).sum())
    return df.loc[~dropped].reset_index(drop=True), report


def repair_values(df: pd.DataFrame, limits: Limits) -> tuple[pd.DataFrame, dict[str, int]]:
    """Repair rules 2-5 on the blood pressures of `df` (changed in place and returned), with a
    count for each; no row is dropped (the serving model uses this row by row too)."""
    report: dict[str, int] = {}
    for column in ("ap_hi", "ap_lo"):
        low, high = getattr(limits, column)
        values = df[column].to_numpy(dtype=float)
        negative = values < 0
        report[f"{column}_negative_made_positive"] = int(negative.sum())
        values = np.abs(values)
        divisions = np.zeros(len(values), dtype=int)
        while (too_high := values > high).any():
            values = np.where(too_high, values / 10, values)
            divisions += too_high
        report[f"{column}_divided_by_10"] = int((divisions == 1).sum())
        report[f"{column}_divided_by_100"] = int((divisions == 2).sum())
        report[f"{column}_divided_by_1000_or_more"] = int((divisions >= 3).sum())
        cmhg = (values >= low / 10) & (values < low)
        report[f"{column}_cmhg_times_10"] = int(cmhg.sum())
        df[column] = np.where(cmhg, values * 10, values)
    swapped = df["ap_lo"] > df["ap_hi"]
    report["ap_lo_above_ap_hi_swapped"] = int(swapped.sum())
    df.loc[swapped, ["ap_hi", "ap_lo"]] = df.loc[swapped, ["ap_lo", "ap_hi"]].to_numpy()
    return df, report


def implausible(df: pd.DataFrame, limits: Limits) -> dict[str, pd.Series]:
    """Repair rule 6: for each reason, in order, the repaired rows it drops (a row counts
    for its first failing reason)."""
    bmi = _bmi(df)
    return {
        "dropped_ap_hi_out_of_range": ~df["ap_hi"].between(*limits.ap_hi),
        "dropped_ap_lo_out_of_range": ~df["ap_lo"].between(*limits.ap_lo),
        "dropped_zero_pulse_pressure": df["ap_hi"] <= df["ap_lo"],
        "dropped_height_out_of_range": ~df["height"].between(*limits.height),
        "dropped_weight_out_of_range": ~df["weight"].between(*limits.weight),
        "dropped_bmi_out_of_range": ~bmi.between(*limits.bmi),
    }


def drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Repair rule 1: keep the first row of each duplicate; return the kept rows (a copy), the
    number of exact duplicate rows and of rows repeating an id with other values."""
    values = [c for c in REQUIRED_COLUMNS if c in frame.columns]
    has_id = ID in frame.columns
    same_row = frame.duplicated(subset=[ID, *values] if has_id else values, keep="first")
    same_id = frame[ID].duplicated(keep="first") & ~same_row if has_id else same_row & False
    kept = frame.loc[~(same_row | same_id)].reset_index(drop=True)
    return kept, int(same_row.sum()), int(same_id.sum())


def split_minimum(test_size: float) -> int:
    """Rows of each class a stratified split with this test fraction needs so both parts get
    both classes: at least 2 (sklearn's own minimum), at least 1/test_size (so the class's share
    of the test part is at least one row) and at least 1/(1 - test_size) (likewise for train)."""
    return max(
        2, math.ceil(1 / test_size - 1e-9), math.ceil(1 / (1 - test_size) - 1e-9)
    )


def check_splittable(target: pd.Series, test_size: float, source: str) -> None:
    """Refuse, in one line, a table too small for a stratified split with `test_size`."""
    minimum = split_minimum(test_size)
    counts = {c: int((target == c).sum()) for c in BINARY}
    if min(counts.values()) >= minimum:
        return
    have = ", ".join(f"{counts[c]} of class {c}" for c in BINARY)
    raise ClrpipeError(
        f"{source}: too few rows to split ({len(target)} rows: {have}); a stratified split with "
        f"split.test_size={test_size:g} needs at least {minimum} rows of each '{TARGET}' class "
        f"({2 * minimum} in all) so that train and test both get both classes"
    )


def _bmi(df: pd.DataFrame) -> pd.Series:
    return df["weight"] / (df["height"] / 100) ** 2


def add_features(df: pd.DataFrame) -> pd.DataFrame:
    """Model inputs (`FEATURES`) plus the target, from a repaired table."""
    out = features(df)
    out[TARGET] = df[TARGET].astype("int8").to_numpy()
    return out


def features(df: pd.DataFrame) -> pd.DataFrame:
    """Model inputs (`FEATURES`, float32) from repaired rows; no target needed.

    Age in years and BMI follow the article's domain; pulse pressure and mean arterial pressure
    are the two blood-pressure summaries cardiology uses, and give a linear model what it cannot
    build from ap_hi and ap_lo alone.
    """
    return pd.DataFrame(
        {
            "age_years": df["age"] / 365.25,
            "male": (df["gender"] == 2).astype(int),
            "height": df["height"],
            "weight": df["weight"],
            "bmi": _bmi(df),
            "ap_hi": df["ap_hi"],
            "ap_lo": df["ap_lo"],
            "pulse_pressure": df["ap_hi"] - df["ap_lo"],
            "mean_arterial_pressure": (df["ap_hi"] + 2 * df["ap_lo"]) / 3,
            "cholesterol": df["cholesterol"],
            "gluc": df["gluc"],
            "smoke": df["smoke"],
            "alco": df["alco"],
            "active": df["active"],
        }
    ).astype("float32")


def prepare(raw: bytes, source: str, limits: Limits) -> tuple[pd.DataFrame, dict, list[str]]:
    """Parse, validate, repair and featurize raw bytes; return features, report and notes."""
    frame, notes = parse_csv(raw, source)
    repaired, report = repair(validate(frame, source), limits)
    if repaired[TARGET].nunique() < 2:
        raise ClrpipeError(f"{source}: column '{TARGET}' has one class left after repair")
    return add_features(repaired), report, notes


def standardize(train: pd.DataFrame, test: pd.DataFrame) -> tuple[list[pd.DataFrame], dict]:
    """The 14 features of both parts standardized by a scaler fitted on `train` only (float32,
    target kept), and that scaler as {features, mean, scale}: what `split` writes to
    scaler.json and the serving model applies."""
    from sklearn.preprocessing import StandardScaler

    features = list(FEATURES)
    scaler = StandardScaler().fit(train[features])
    parts = []
    for part in (train, test):
        scaled = pd.DataFrame(scaler.transform(part[features]).astype("float32"),
                              columns=features)
        scaled[TARGET] = part[TARGET].to_numpy()
        parts.append(scaled)
    return parts, {"features": features, "mean": scaler.mean_.tolist(),
                   "scale": scaler.scale_.tolist()}

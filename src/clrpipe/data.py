"""The cardio table: parse, validate, repair, add features. Pure: bytes and frames in, frames out.

No file or network I/O happens here; the `prepare` stage reads the bytes and writes the results.

Validation is a pandera schema (`RAW_SCHEMA`): every required column present and numeric, no
missing values (clrpipe refuses them rather than impute: the source table has none, so a gap means
a broken export, and a guessed blood pressure would be worse than a clear error), categorical codes
within their documented sets, and both target classes present.

Repair rules (`repair`), applied in this order, each counted in the report:

1. A negative blood pressure is a sign typo: take its absolute value.
2. A blood pressure above its plausible maximum has extra digits (``1100`` for 110, ``11000`` for
   110, ``16020`` for 160): divide by 10 until it is at most the maximum (counted as 10x or 100x).
3. A blood pressure between a tenth of its plausible minimum and the minimum was written in cmHg
   (``12`` for 120 mmHg): multiply by 10. Smaller values (0, 1) are left for rule 5 to drop.
4. Diastolic above systolic (``ap_lo > ap_hi``) is a transposed entry: swap them.
5. Rows still implausible are dropped, each for its first failing reason: blood pressures outside
   the limits, pulse pressure <= 0 (``ap_hi == ap_lo``), height or weight outside the adult limits
   (55 cm and 10 kg are not adult measurements and no unit slip explains them reliably), BMI outside
   its limits.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors

from clrpipe.errors import ClrpipeError
from clrpipe.params import Limits

TARGET = "cardio"
IGNORED_COLUMNS = ("id",)
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
    text = _decode(raw, source)
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
    frame = frame[list(REQUIRED_COLUMNS)].apply(lambda col: col.str.strip())
    return frame, notes


def _decode(raw: bytes, source: str) -> str:
    if b"\x00" in raw[:65536]:
        raise ClrpipeError(f"{source}: binary content (NUL byte); expected a text CSV table")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ClrpipeError(
            f"{source}: not UTF-8 text (byte {err.start}); expected a text CSV table"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def validate(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check the parsed table against `RAW_SCHEMA` and return it with numeric dtypes."""
    blank = frame.eq("")
    if blank.to_numpy().any():
        column = frame.columns[blank.any().to_numpy()][0]
        rows = np.flatnonzero(blank[column].to_numpy())
        raise ClrpipeError(
            f"{source}: column '{column}' has {len(rows)} missing value(s) (first in data row "
            f"{rows[0] + 1}); expected a number in every row (clrpipe does not impute)"
        )
    try:
        return RAW_SCHEMA.validate(frame)
    except SchemaError as err:
        raise ClrpipeError(_describe(err, source)) from None
    except SchemaErrors as errs:  # pandera groups type-coercion failures even when not lazy
        raise ClrpipeError(_describe(errs.schema_errors[0], source)) from None


def _describe(err: SchemaError, source: str) -> str:
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
    df = frame.copy()
    report: dict[str, int] = {"rows_in": len(df)}
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

    bmi = _bmi(df)
    reasons = {
        "dropped_ap_hi_out_of_range": ~df["ap_hi"].between(*limits.ap_hi),
        "dropped_ap_lo_out_of_range": ~df["ap_lo"].between(*limits.ap_lo),
        "dropped_zero_pulse_pressure": df["ap_hi"] <= df["ap_lo"],
        "dropped_height_out_of_range": ~df["height"].between(*limits.height),
        "dropped_weight_out_of_range": ~df["weight"].between(*limits.weight),
        "dropped_bmi_out_of_range": ~bmi.between(*limits.bmi),
    }
    dropped = pd.Series(False, index=df.index)
    for name, mask in reasons.items():
        report[name] = int((mask & ~dropped).sum())
        dropped |= mask
    report["rows_dropped"] = int(dropped.sum())
    report["rows_out"] = int((~dropped).sum())
    return df.loc[~dropped].reset_index(drop=True), report


def _bmi(df: pd.DataFrame) -> pd.Series:
    return df["weight"] / (df["height"] / 100) ** 2


def add_features(df: pd.DataFrame) -> pd.DataFrame:
    """Model inputs (`FEATURES`) plus the target, from a repaired table.

    Age in years and BMI follow the article's domain; pulse pressure and mean arterial pressure
    are the two blood-pressure summaries cardiology uses, and give a linear model what it cannot
    build from ap_hi and ap_lo alone.
    """
    out = pd.DataFrame(
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
    out[TARGET] = df[TARGET].astype("int8").to_numpy()
    return out


def prepare(raw: bytes, source: str, limits: Limits) -> tuple[pd.DataFrame, dict, list[str]]:
    """Parse, validate, repair and featurize raw bytes; return features, report and notes."""
    frame, notes = parse_csv(raw, source)
    repaired, report = repair(validate(frame, source), limits)
    if repaired[TARGET].nunique() < 2:
        raise ClrpipeError(f"{source}: column '{TARGET}' has one class left after repair")
    return add_features(repaired), report, notes

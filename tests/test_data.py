"""The pure data core: parsing, schema validation, repair rules and features."""

from __future__ import annotations

import builtins
import bz2
import gzip
import io
import itertools
import lzma
import socket
import zipfile

import numpy as np
import pandas as pd
import pytest

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.data import cardio

HEADER = "id;age;gender;height;weight;ap_hi;ap_lo;cholesterol;gluc;smoke;alco;active;cardio"


def table(*rows: str) -> bytes:
    return "\n".join([HEADER, *rows]).encode()


IDS = itertools.count(1)


def row(ap_hi=120, ap_lo=80, height=170, weight=70.0, cardio=0, gender=1, id=None) -> str:
    """A data row; each gets a new id unless one is given (equal ids are duplicates)."""
    id = next(IDS) if id is None else id
    return f"{id};18000;{gender};{height};{weight};{ap_hi};{ap_lo};1;1;0;0;1;{cardio}"


def parsed(*rows: str) -> pd.DataFrame:
    """Rows as numbers, without the whole-table checks (a tiny table has one class)."""
    return cardio.parse_csv(table(*rows), "t.csv")[0].astype(float)


def repaired(*rows: str) -> tuple[pd.DataFrame, dict]:
    return cardio.repair(parsed(*rows), cardio.Limits())


REAL_REPORT = {
    "rows_in": 70000,
    "dropped_duplicate_row": 0,
    "dropped_duplicate_id": 0,
    "ap_hi_negative_made_positive": 7,
    "ap_hi_divided_by_10": 31,
    "ap_hi_divided_by_100": 9,
    "ap_hi_divided_by_1000_or_more": 0,
    "ap_hi_cmhg_times_10": 181,
    "ap_lo_negative_made_positive": 1,
    "ap_lo_divided_by_10": 928,
    "ap_lo_divided_by_100": 25,
    "ap_lo_divided_by_1000_or_more": 0,
    "ap_lo_cmhg_times_10": 31,
    "ap_lo_above_ap_hi_swapped": 128,
    "dropped_ap_hi_out_of_range": 2,
    "dropped_ap_lo_out_of_range": 23,
    "dropped_zero_pulse_pressure": 2,
    "dropped_height_out_of_range": 53,
    "dropped_weight_out_of_range": 7,
    "dropped_bmi_out_of_range": 5,
    "rows_dropped": 92,
    "rows_out": 69908,
}


def test_real_table_repair_report_counts(cardio_bytes):
    features, report, notes = cardio.prepare(cardio_bytes, "cardio_train.csv", cardio.Limits())
    assert report == REAL_REPORT
    assert notes == []
    assert len(features) == 69908
    assert list(features.columns) == [*cardio.FEATURES, cardio.TARGET]
    assert features[list(cardio.FEATURES)].notna().all().all()
    assert features["ap_hi"].between(60, 250).all() and features["ap_lo"].between(30, 200).all()
    assert (features["ap_hi"] > features["ap_lo"]).all()
    assert features["cardio"].mean() == pytest.approx(0.4997, abs=0.002)


def test_negative_pressures_become_positive():
    df, report = repaired(row(ap_hi=-140, ap_lo=-90))
    assert (df.ap_hi[0], df.ap_lo[0]) == (140, 90)
    assert report["ap_hi_negative_made_positive"] == report["ap_lo_negative_made_positive"] == 1


def test_extra_digits_are_divided_away():
    df, report = repaired(row(ap_hi=1400, ap_lo=90), row(ap_hi=16020, ap_lo=8000))
    assert df.ap_hi.tolist() == [140, pytest.approx(160.2)]
    assert df.ap_lo.tolist() == [90, 80]
    assert report["ap_hi_divided_by_10"] == 1 and report["ap_hi_divided_by_100"] == 1
    assert report["ap_lo_divided_by_100"] == 1


def test_cmhg_values_are_multiplied_and_tiny_values_dropped():
    df, report = repaired(row(ap_hi=12, ap_lo=8), row(ap_hi=1, ap_lo=0))
    assert (df.ap_hi[0], df.ap_lo[0]) == (120, 80)
    assert report["ap_hi_cmhg_times_10"] == 1 and report["ap_lo_cmhg_times_10"] == 1
    assert report["dropped_ap_hi_out_of_range"] == 1 and report["rows_out"] == 1


def test_transposed_pressures_are_swapped_and_equal_ones_dropped():
    df, report = repaired(row(ap_hi=80, ap_lo=120), row(ap_hi=120, ap_lo=120))
    assert (df.ap_hi[0], df.ap_lo[0]) == (120, 80)
    assert report["ap_lo_above_ap_hi_swapped"] == 1
    assert report["dropped_zero_pulse_pressure"] == 1 and len(df) == 1


def test_impossible_bodies_are_dropped_with_first_reason_counted():
    df, report = repaired(
        row(height=55), row(weight=10.0), row(height=120, weight=200.0), row(height=165)
    )
    assert report["dropped_height_out_of_range"] == 1
    assert report["dropped_weight_out_of_range"] == 1
    assert report["dropped_bmi_out_of_range"] == 1
    assert df.height.tolist() == [165]


def test_features_are_derived_from_repaired_values():
    features = cardio.add_features(parsed(row(ap_hi=140, ap_lo=90, height=180, weight=81.0)))
    first = features.iloc[0]
    assert first.age_years == pytest.approx(18000 / 365.25)
    assert first.bmi == pytest.approx(25.0)
    assert first.pulse_pressure == 50
    assert first.mean_arterial_pressure == pytest.approx((140 + 180) / 3)
    assert first.male == 0


def test_limits_must_be_ordered():
    with pytest.raises(ValueError, match="0 < low < high"):
        cardio.Limits(height=(200, 100))


def test_core_does_no_file_or_network_io(cardio_bytes, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the data core must not do I/O")

    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(socket, "socket", forbidden)
    head = cardio_bytes[: cardio_bytes.index(b"\n", 200_000) + 1]
    features, report, _ = cardio.prepare(head, "head.csv", cardio.Limits())
    assert report["rows_in"] == head.count(b"\n") - 1
    assert np.isfinite(features[list(cardio.FEATURES)].to_numpy()).all()


def test_missing_values_are_refused_naming_column_and_row():
    with pytest.raises(ClrpipeError) as err:
        cardio.validate(cardio.parse_csv(table(row(), row(ap_lo="")), "t.csv")[0], "t.csv")
    assert str(err.value) == (
        "t.csv: column 'ap_lo' has 1 missing value(s) (first in data row 2: blank); expected a "
        "number in every row (clrpipe does not impute)"
    )


def validated(raw: bytes) -> pd.DataFrame:
    return cardio.validate(cardio.parse_csv(raw, "t.csv")[0], "t.csv")


def with_cell(column: str, value: str) -> bytes:
    """A valid two-class table whose third data row has `value` in `column`."""
    rows = [row(cardio=0), row(cardio=1), row(), row(cardio=1)]
    cells = rows[2].split(";")
    cells[HEADER.split(";").index(column)] = value
    rows[2] = ";".join(cells)
    return table(*rows)


@pytest.mark.parametrize("token", ["", "NaN", "nan", "-nan", "NA", "N/A", "null", "None", "#N/A"])
@pytest.mark.parametrize("column", HEADER.split(";"))
def test_every_column_calls_a_missing_value_missing(column, token):
    """Before: `weight=NaN` passed validation (and the row was dropped as out of range), and in
    a coded column it read `expected 0 or 1, got np.float64(nan)`."""
    with pytest.raises(ClrpipeError) as err:
        validated(with_cell(column, token))
    shown = repr(token) if token else "blank"
    expected = "an id" if column == "id" else "a number"
    assert str(err.value) == (
        f"t.csv: column '{column}' has 1 missing value(s) (first in data row 3: {shown}); "
        f"expected {expected} in every row (clrpipe does not impute)"
    )


@pytest.mark.parametrize("column", ["age", "height", "weight", "ap_hi", "ap_lo"])
def test_infinite_numbers_are_refused(column):
    """Before, `age=inf` passed (age > 0) and reached the features as an infinite age."""
    with pytest.raises(ClrpipeError) as err:
        validated(with_cell(column, "-inf" if column == "ap_lo" else "inf"))
    shown = "'-inf'" if column == "ap_lo" else "'inf'"
    assert str(err.value) == (
        f"t.csv: column '{column}' expected finite numbers, got {shown} (first in data row 3) "
        "in 1 row(s)"
    )


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [("smoke", "inf", "0 or 1"), ("gender", "3", "1 (women) or 2 (men)"),
     ("cholesterol", "1.5", "1, 2 or 3"), ("cardio", "2", "0 or 1")],
)
def test_bad_codes_show_the_value_as_written(column, value, expected):
    with pytest.raises(ClrpipeError) as err:
        validated(with_cell(column, value))
    assert str(err.value) == (
        f"t.csv: column '{column}' expected {expected}, got '{value}' (first in data row 3) in "
        "1 row(s)"
    )


def test_duplicate_ids_keep_the_first_row_and_are_counted_by_kind():
    df, report = repaired(
        row(id=1, weight=70.0),
        row(id=2, weight=80.0),
        row(id=1, weight=70.0),  # exact copy of the first row
        row(id=1, weight=71.0),  # same id, other values: conflicting record
        row(id=3, weight=90.0),
        row(id=2, weight=80.0),  # exact copy
        row(id=1, weight=71.0),  # a copy of the conflicting record: an exact duplicate row
    )
    assert df.weight.tolist() == [70.0, 80.0, 90.0]
    assert report["dropped_duplicate_row"] == 3 and report["dropped_duplicate_id"] == 1
    assert report["rows_dropped"] == 4 and report["rows_out"] == 3
    assert report["rows_in"] == report["rows_out"] + report["rows_dropped"]


def test_duplicates_compare_values_as_numbers_and_ids_as_written():
    raw = table(row(id=5, weight=70), row(id=5, weight="70.0"), row(id="05", cardio=1))
    _, report, _ = cardio.prepare(raw, "t.csv", cardio.Limits())
    assert report["dropped_duplicate_row"] == 1 and report["dropped_duplicate_id"] == 0


def test_duplicates_are_dropped_before_the_other_rules_and_not_double_counted():
    df, report = repaired(row(id=1, ap_hi=1400), row(id=1, ap_hi=1400), row(id=1, height=55))
    assert report["ap_hi_divided_by_10"] == 1
    assert report["dropped_duplicate_row"] == 1 and report["dropped_duplicate_id"] == 1
    assert report["dropped_height_out_of_range"] == 0 and report["rows_dropped"] == 2
    assert df.ap_hi.tolist() == [140]


def test_without_an_id_column_exact_duplicate_rows_are_dropped():
    lines = table(row(), row(weight=80.0), row(cardio=1)).decode().splitlines()
    no_id = [line.split(";", 1)[1] for line in lines]
    raw = "\n".join([*no_id, no_id[1], no_id[2], no_id[1]]).encode()
    df, report, _ = cardio.prepare(raw, "t.csv", cardio.Limits())
    assert report["dropped_duplicate_row"] == 3 and report["dropped_duplicate_id"] == 0
    assert report["rows_in"] == 6 and report["rows_out"] == 3
    assert df.weight.tolist() == [70.0, 80.0, 70.0]


def test_different_ids_with_equal_values_are_different_patients():
    df, report = repaired(row(id=1), row(id=2), row(id=3))
    assert report["dropped_duplicate_row"] == report["dropped_duplicate_id"] == 0
    assert len(df) == 3


def test_the_id_is_read_but_is_not_a_feature():
    frame, notes = cardio.parse_csv(table(row(id=7)), "t.csv")
    assert frame["id"].tolist() == ["7"] and notes == []
    features, _, _ = cardio.prepare(table(row(), row(cardio=1)), "t.csv", cardio.Limits())
    assert list(features.columns) == [*cardio.FEATURES, cardio.TARGET]


def refusal(raw: bytes) -> str:
    with pytest.raises(ClrpipeError) as err:
        cardio.parse_csv(raw, "t.csv")
    return str(err.value)


def zipped(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name.replace("__", "/"), content)
    return buffer.getvalue()


RESAVE = "re-save it as UTF-8 (e.g. iconv -f {} -t UTF-8 t.csv > cardio_train.csv)"
TEXT = table(row(), row(cardio=1)).decode()
NOT_UTF8 = {
    "UTF-16LE with BOM": (
        TEXT.encode("utf-16"),
        "t.csv: UTF-16 text (byte-order mark FF FE); expected UTF-8: " + RESAVE.format("UTF-16"),
    ),
    "UTF-16BE with BOM": (
        b"\xfe\xff" + TEXT.encode("utf-16-be"),
        "t.csv: UTF-16 text (byte-order mark FE FF); expected UTF-8: " + RESAVE.format("UTF-16"),
    ),
    "UTF-16LE without BOM": (
        TEXT.encode("utf-16-le"),
        "t.csv: UTF-16 text without a byte-order mark (UTF-16LE, every other byte NUL); "
        "expected UTF-8: " + RESAVE.format("UTF-16LE"),
    ),
    "UTF-16BE without BOM": (
        TEXT.encode("utf-16-be"),
        "t.csv: UTF-16 text without a byte-order mark (UTF-16BE, every other byte NUL); "
        "expected UTF-8: " + RESAVE.format("UTF-16BE"),
    ),
    "UTF-32": (
        TEXT.encode("utf-32"),
        "t.csv: UTF-32 text (byte-order mark FF FE 00 00); expected UTF-8: "
        + RESAVE.format("UTF-32"),
    ),
    "gzip": (
        gzip.compress(TEXT.encode()),
        "t.csv: gzip-compressed (starts with 1F 8B), not a CSV table; decompress it first "
        "(gzip -dc t.csv > cardio_train.csv) and use that file",
    ),
    "bzip2": (
        bz2.compress(TEXT.encode()),
        "t.csv: bzip2-compressed (starts with 42 5A 68), not a CSV table; decompress it first "
        "(bzip2 -dc t.csv > cardio_train.csv) and use that file",
    ),
    "xz": (
        lzma.compress(TEXT.encode()),
        "t.csv: xz-compressed (starts with FD 37 7A 58 5A 00), not a CSV table; decompress it "
        "first (xz -dc t.csv > cardio_train.csv) and use that file",
    ),
    "zstd": (
        b"\x28\xb5\x2f\xfd" + bytes(32),
        "t.csv: zstd-compressed (starts with 28 B5 2F FD), not a CSV table; decompress it "
        "first (zstd -dc t.csv > cardio_train.csv) and use that file",
    ),
    "zip": (
        zipped(cardio_train__csv=b"", **{"cardio_train.csv": TEXT.encode()}),
        "t.csv: a zip archive containing cardio_train/csv, cardio_train.csv (starts with 50 4B), "
        "not a CSV table; extract the CSV first (unzip t.csv) and use that file",
    ),
    "empty zip": (
        zipped(),
        "t.csv: a zip archive (starts with 50 4B), not a CSV table; extract the CSV first "
        "(unzip t.csv) and use that file",
    ),
    "xlsx": (
        zipped(**{"[Content_Types].xml": b"", "xl__workbook.xml": b""}),
        "t.csv: an Excel workbook, not a CSV table; export the sheet as CSV (UTF-8, ';' or ',' "
        "separated) and use that file",
    ),
    "parquet": (
        b"PAR1" + bytes(64),
        "t.csv: a Parquet file, not a CSV table; expected the raw CSV table",
    ),
    "other binary": (
        bytes(range(256)) * 4,
        "t.csv: binary content (NUL byte); expected a text CSV table",
    ),
    "latin-1": (
        TEXT.replace("id", "\u00e9").encode("latin-1"),
        "t.csv: not UTF-8 text (byte 0); expected a text CSV table (re-save it as UTF-8)",
    ),
}


@pytest.mark.parametrize("kind", NOT_UTF8)
def test_non_utf8_inputs_are_recognised_and_told_what_to_do(kind):
    raw, message = NOT_UTF8[kind]
    assert refusal(raw) == message


def test_a_bzip2_lookalike_text_is_still_read_as_text():
    raw = table(row(), row(cardio=1)).replace(b"id;", b"BZh;", 1)
    frame, notes = cardio.parse_csv(raw, "t.csv")
    assert len(frame) == 2 and notes == ["t.csv: ignoring extra column(s) bzh"]


@pytest.mark.parametrize(
    ("test_size", "minimum"), [(0.2, 5), (0.25, 4), (0.1, 10), (1 / 3, 3), (0.5, 2), (0.75, 4),
                               (0.9, 10), (0.3, 4)],
)
def test_split_minimum_per_class(test_size, minimum):
    assert cardio.split_minimum(test_size) == minimum


def test_a_table_too_small_to_split_is_refused_stating_the_minimum():
    target = pd.Series([0, 0, 0, 1, 1])
    with pytest.raises(ClrpipeError) as err:
        cardio.check_splittable(target, 0.2, "p.parquet")
    assert str(err.value) == (
        "p.parquet: too few rows to split (5 rows: 3 of class 0, 2 of class 1); a stratified "
        "split with split.test_size=0.2 needs at least 5 rows of each 'cardio' class (10 in all) "
        "so that train and test both get both classes"
    )
    cardio.check_splittable(pd.Series([0] * 5 + [1] * 5), 0.2, "p.parquet")


@pytest.mark.parametrize("test_size", [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
def test_the_split_minimum_is_enough_for_sklearn(test_size):
    """At the minimum (and just above it, imbalanced), both parts get both classes."""
    from sklearn.model_selection import train_test_split

    minimum = cardio.split_minimum(test_size)
    for count_0, count_1 in itertools.product((minimum, minimum + 1), (minimum, minimum + 3, 97)):
        y = np.array([0] * count_0 + [1] * count_1)
        for seed in range(3):
            train, test = train_test_split(y, test_size=test_size, random_state=seed, stratify=y)
            assert set(train) == set(test) == {0, 1}, (count_0, count_1, seed)

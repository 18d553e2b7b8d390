"""The pure data core: parsing, schema validation, repair rules and features."""

from __future__ import annotations

import builtins
import socket

import numpy as np
import pandas as pd
import pytest

from clrpipe import data
from clrpipe.errors import ClrpipeError

HEADER = "id;age;gender;height;weight;ap_hi;ap_lo;cholesterol;gluc;smoke;alco;active;cardio"


def table(*rows: str) -> bytes:
    return "\n".join([HEADER, *rows]).encode()


def row(ap_hi=120, ap_lo=80, height=170, weight=70.0, cardio=0, gender=1) -> str:
    return f"0;18000;{gender};{height};{weight};{ap_hi};{ap_lo};1;1;0;0;1;{cardio}"


def parsed(*rows: str) -> pd.DataFrame:
    """Rows as numbers, without the whole-table checks (a tiny table has one class)."""
    return data.parse_csv(table(*rows), "t.csv")[0].astype(float)


def repaired(*rows: str) -> tuple[pd.DataFrame, dict]:
    return data.repair(parsed(*rows), data.Limits())


REAL_REPORT = {
    "rows_in": 70000,
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
    features, report, notes = data.prepare(cardio_bytes, "cardio_train.csv", data.Limits())
    assert report == REAL_REPORT
    assert notes == []
    assert len(features) == 69908
    assert list(features.columns) == [*data.FEATURES, data.TARGET]
    assert features[list(data.FEATURES)].notna().all().all()
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
    features = data.add_features(parsed(row(ap_hi=140, ap_lo=90, height=180, weight=81.0)))
    first = features.iloc[0]
    assert first.age_years == pytest.approx(18000 / 365.25)
    assert first.bmi == pytest.approx(25.0)
    assert first.pulse_pressure == 50
    assert first.mean_arterial_pressure == pytest.approx((140 + 180) / 3)
    assert first.male == 0


def test_limits_must_be_ordered():
    with pytest.raises(ValueError, match="0 < low < high"):
        data.Limits(height=(200, 100))


def test_core_does_no_file_or_network_io(cardio_bytes, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the data core must not do I/O")

    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(socket, "socket", forbidden)
    head = cardio_bytes[: cardio_bytes.index(b"\n", 200_000) + 1]
    features, report, _ = data.prepare(head, "head.csv", data.Limits())
    assert report["rows_in"] == head.count(b"\n") - 1
    assert np.isfinite(features[list(data.FEATURES)].to_numpy()).all()


def test_missing_values_are_refused_naming_column_and_row():
    with pytest.raises(ClrpipeError, match=r"column 'ap_lo' has 1 missing value\(s\) \(first in"
                                           r" data row 2\)"):
        data.validate(data.parse_csv(table(row(), row(ap_lo="")), "t.csv")[0], "t.csv")

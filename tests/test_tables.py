"""The pure core for a user's table: reading, checks, task inference, cleaning, preprocessing."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zipfile
from importlib.resources import files

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.model_selection import train_test_split

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.data import tables
from clrpipe.pipeline.data.tables import Preprocessor, TableSchema, prepare_table, read_table
from clrpipe.pipeline.params import TableData

PENGUINS = files("palmerpenguins") / "data" / "penguins.csv"


def cfg(target="y", **keys) -> TableData:
    return TableData(kind="table", raw="t.csv", target=target, **keys)


def prepared(frame: pd.DataFrame, target="y", **keys):
    return prepare_table(frame, cfg(target, **keys), "t.csv")


def fails(frame: pd.DataFrame, message: str, target="y", **keys) -> None:
    with pytest.raises(ClrpipeError) as err:
        prepared(frame, target, **keys)
    assert str(err.value) == message


def read_fails(raw: bytes, source: str, message: str, format=None) -> None:
    with pytest.raises(ClrpipeError) as err:
        read_table(raw, source, format)
    assert str(err.value) == message


def csv_bytes(frame: pd.DataFrame, sep=",") -> bytes:
    return frame.to_csv(index=False, sep=sep).encode()


def small(y, **columns) -> pd.DataFrame:
    x = columns or {"x": np.arange(len(y), dtype=float)}
    return pd.DataFrame({**x, "y": y})


@pytest.fixture(scope="module")
def penguins() -> tuple[pd.DataFrame, TableSchema, dict, list[str]]:
    frame = read_table(PENGUINS.read_bytes(), "penguins.csv", None)
    return prepare_table(frame, cfg("species"), "penguins.csv")


@pytest.fixture(scope="module")
def penguin_split(penguins):
    out, schema, _, _ = penguins
    train, test = train_test_split(out, test_size=0.25, random_state=0, stratify=out["species"])
    return train.reset_index(drop=True), test.reset_index(drop=True), schema


# --- task inference -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y", "task", "classes", "note"),
    [
        (["a", "b"] * 5, "binary", ("a", "b"), "2 text classes"),
        (["b", "a", "c"] * 4, "multiclass", ("a", "b", "c"), "3 text classes"),
        ([True, False] * 5, "binary", (False, True), "2 boolean classes"),
        ([2, 0, 1] * 4, "multiclass", (0, 1, 2), "3 integer levels"),
        ([1.0, 3.0] * 5, "binary", (1, 3), "2 integer levels"),
        (list(range(25)), "regression", None,
         "25 integer levels, more than data.max_classes=20"),
        ([0.5, 1.25, 2.0, 3.0] * 3, "regression", None, "non-integer numbers"),
    ],
)
def test_task_is_inferred_from_the_target(y, task, classes, note):
    out, schema, report, notes = prepared(small(y))
    assert (schema.task, schema.task_inferred, schema.classes) == (task, True, classes)
    assert notes[0] == f"task inferred: {task} ({note} in 'y'); set data.task to override"
    assert report["task"] == task and report["task_inferred"] is True
    assert report["classes"] == (None if classes is None else list(classes))
    kind = {str: object, bool: bool, int: np.int64}.get(type(classes[0]) if classes else None)
    if classes is None:
        assert out["y"].dtype == np.float64
    elif kind is object:
        assert pd.api.types.is_string_dtype(out["y"].dtype)
    else:
        assert out["y"].dtype == kind


def test_max_classes_moves_the_integer_threshold():
    _, schema, _, notes = prepared(small(list(range(25))), max_classes=25)
    assert schema.task == "multiclass" and len(schema.classes) == 25
    assert notes[0].startswith("task inferred: multiclass (25 integer levels in 'y')")


def test_an_explicit_task_overrides_the_inference():
    _, schema, report, notes = prepared(small([2, 0, 1] * 4), task="regression")
    assert (schema.task, schema.task_inferred, schema.classes) == ("regression", False, None)
    assert report["task_inferred"] is False and notes == []
    _, schema, _, notes = prepared(small(["a", "b"] * 5), task="multiclass")
    assert (schema.task, schema.task_inferred, schema.classes) == ("multiclass", False, ("a", "b"))
    _, schema, _, _ = prepared(small(list(range(25))), task="multiclass")
    assert schema.task == "multiclass" and schema.classes == tuple(range(25))


# --- real tables in each format -------------------------------------------------------------------


def test_breast_cancer_csv_is_binary_with_30_numeric_features():
    frame = load_breast_cancer(as_frame=True).frame
    table = read_table(csv_bytes(frame), "data/raw/cancer.csv", None)
    out, schema, report, notes = prepare_table(table, cfg("target"), "data/raw/cancer.csv")
    assert (schema.task, schema.task_inferred, schema.classes) == ("binary", True, (0, 1))
    assert len(schema.numeric) == 30 and schema.categorical == ()
    assert schema.numeric == tuple(frame.columns[:30])
    assert list(out.columns) == [*frame.columns[:30], "target"]
    assert (report["rows_in"], report["rows_out"]) == (569, 569)
    assert report["class_counts"] == {"0": 212, "1": 357}
    assert notes == ["task inferred: binary (2 integer levels in 'target'); set data.task to "
                     "override"]
    np.testing.assert_allclose(out[list(schema.numeric)].to_numpy(), frame.iloc[:, :30].to_numpy())
    pre = Preprocessor.fit(out, schema, "impute")
    x, counts = pre.transform(out)
    assert x.shape == (569, 30) and x.dtype == np.float32
    assert pre.features == list(frame.columns[:30])  # no gaps in training: no indicators
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    assert counts == {"unseen_categories": {}, "imputed": dict.fromkeys(schema.numeric, 0)}


def test_wine_tsv_is_multiclass():
    frame = load_wine(as_frame=True).frame
    table = read_table(csv_bytes(frame, sep="\t"), "wine.tsv", None)
    _, schema, report, _ = prepare_table(table, cfg("target"), "wine.tsv")
    assert (schema.task, schema.classes, len(schema.numeric)) == ("multiclass", (0, 1, 2), 13)
    assert report["class_counts"] == {"0": 59, "1": 71, "2": 48}
    assert read_table(csv_bytes(frame, sep="\t"), "wine.tab", None).shape == (178, 14)
    assert read_table(csv_bytes(frame, sep="\t"), "wine.txt", "tsv").shape == (178, 14)


def test_diabetes_parquet_is_regression():
    frame = load_diabetes(as_frame=True, scaled=False).frame
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    table = read_table(buffer.getvalue(), "diabetes.parquet", None)
    out, schema, _, notes = prepare_table(table, cfg("target"), "diabetes.parquet")
    assert (schema.task, schema.classes, schema.categorical) == ("regression", None, ())
    assert schema.numeric == ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
    assert notes == ["task inferred: regression (214 integer levels, more than "
                     "data.max_classes=20 in 'target'); set data.task to override"]
    pre = Preprocessor.fit(out, schema, "impute")
    y = pre.encode_target(out["target"])
    assert y.dtype == np.float32 and abs(float(y.mean())) < 1e-5 and abs(y.std() - 1) < 1e-5
    assert pre.target_mean == pytest.approx(frame["target"].mean())
    assert pre.target_std == pytest.approx(frame["target"].std(ddof=0))
    np.testing.assert_allclose(pre.decode_target(y), frame["target"], rtol=1e-5)
    assert read_table(buffer.getvalue(), "diabetes.pq", None).shape == (442, 11)


# --- penguins: text categories and missing values -------------------------------------------------


def test_penguins_species_with_text_categories_and_gaps(penguins):
    out, schema, report, notes = penguins
    assert (schema.task, schema.classes) == ("multiclass", ("Adelie", "Chinstrap", "Gentoo"))
    assert schema.numeric == (
        "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"
    )
    assert schema.categorical == ("island", "sex")
    assert list(out.columns) == [*schema.numeric, *schema.categorical, "species"]
    assert report["missing"] == {
        "island": 0, "bill_length_mm": 2, "bill_depth_mm": 2, "flipper_length_mm": 2,
        "body_mass_g": 2, "sex": 11, "year": 0,
    }
    assert report["class_counts"] == {"Adelie": 152, "Chinstrap": 68, "Gentoo": 124}
    assert notes == [
        "task inferred: multiclass (3 text classes in 'species'); set data.task to override",
        "missing values in 5 column(s) (bill_length_mm 2, bill_depth_mm 2, flipper_length_mm "
        "2, body_mass_g 2, sex 11): imputed from the training part",
    ]
    tables.frame_schema(schema, "impute").validate(out)


def test_penguins_preprocessor(penguin_split):
    train, test, schema = penguin_split
    pre = Preprocessor.fit(train, schema, "impute")
    gaps = [c for c in schema.numeric if train[c].isna().any()]
    assert gaps == ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    assert pre.features == [
        *schema.numeric,
        *(f"missing:{c}" for c in gaps),
        "island=Biscoe", "island=Dream", "island=Torgersen", "sex=female", "sex=male",
    ]
    x, counts = pre.transform(test)
    assert x.shape == (len(test), 14) and x.dtype == np.float32
    assert counts["imputed"] == {c: int(test[c].isna().sum()) for c in schema.features}
    assert counts["unseen_categories"] == {"island": 0, "sex": 0}
    for c in gaps:  # indicators are 0/1, unscaled
        np.testing.assert_array_equal(x[:, pre.features.index(f"missing:{c}")],
                                      test[c].isna().astype(np.float32))
    islands = x[:, pre.features.index("island=Biscoe"):pre.features.index("sex=female")]
    np.testing.assert_array_equal(islands.sum(axis=1), 1)
    np.testing.assert_array_equal(islands[:, 1], (test["island"] == "Dream").astype(np.float32))
    sex = x[:, pre.features.index("sex=female"):]
    np.testing.assert_array_equal(sex.sum(axis=1), 1)  # a missing sex is the most frequent
    described = pre.describe()
    assert described["medians"] == {c: float(train[c].median()) for c in schema.numeric}
    assert described["most_frequent"]["sex"] == train["sex"].mode()[0]
    assert described["categories"] == {
        "island": ["Biscoe", "Dream", "Torgersen"], "sex": ["female", "male"]
    }
    assert json.loads(json.dumps(described)) == described


def test_medians_come_from_training_only(penguin_split):
    train, test, schema = penguin_split
    pre = Preprocessor.fit(train, schema, "impute")
    before = pre.describe()
    extreme = test.copy()
    extreme.loc[0, "bill_length_mm"] = 1e6
    extreme.loc[1, "bill_length_mm"] = np.nan
    x, counts = pre.transform(extreme)
    assert pre.describe() == before
    assert counts["imputed"]["bill_length_mm"] == int(test["bill_length_mm"].isna().sum()) + (
        0 if pd.isna(test.loc[1, "bill_length_mm"]) else 1
    )
    column = schema.numeric.index("bill_length_mm")
    median, mean, scale = (before[k]["bill_length_mm"] for k in ("medians", "means", "scales"))
    assert median == float(train["bill_length_mm"].median())
    assert x[1, column] == pytest.approx((median - mean) / scale, rel=1e-6)
    assert x[0, column] == pytest.approx((1e6 - mean) / scale, rel=1e-6)
    full = Preprocessor.fit(pd.concat([train, extreme]), schema, "impute").describe()
    assert full["means"]["bill_length_mm"] != mean  # fitting on more rows would change them


def test_an_unseen_category_is_all_zeros_and_counted(penguin_split):
    train, test, schema = penguin_split
    pre = Preprocessor.fit(train[train["island"] != "Torgersen"], schema, "impute")
    assert pre.categories["island"] == ["Biscoe", "Dream"]
    odd = test.copy()
    odd.loc[[0, 1], "island"] = "Atlantis"
    x, counts = pre.transform(odd)
    expected = int((odd["island"] == "Torgersen").sum()) + 2
    assert counts["unseen_categories"] == {"island": expected, "sex": 0}
    islands = x[:, [pre.features.index("island=Biscoe"), pre.features.index("island=Dream")]]
    unseen = ~odd["island"].isin(["Biscoe", "Dream"]).to_numpy()
    np.testing.assert_array_equal(islands[unseen], 0)
    np.testing.assert_array_equal(islands[~unseen].sum(axis=1), 1)


def test_class_targets_round_trip(penguin_split):
    train, test, schema = penguin_split
    pre = Preprocessor.fit(train, schema, "impute")
    y = pre.encode_target(test["species"])
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, test["species"].map(
        {"Adelie": 0, "Chinstrap": 1, "Gentoo": 2}))
    np.testing.assert_array_equal(pre.decode_target(y), test["species"].to_numpy())
    probabilities = np.eye(3)[y] * 0.8 + 0.05
    np.testing.assert_array_equal(pre.decode_target(probabilities), test["species"].to_numpy())
    with pytest.raises(ClrpipeError) as err:
        pre.encode_target(pd.Series(["Adelie", "Emperor"]))
    assert str(err.value) == (
        "column 'species': label 'Emperor' is not one of the classes ('Adelie', 'Chinstrap', "
        "'Gentoo')"
    )


def test_binary_and_boolean_targets_round_trip():
    out, schema, _, _ = prepared(small([True, False, False] * 4))
    pre = Preprocessor.fit(out, schema, "impute")
    y = pre.encode_target(out["y"])
    np.testing.assert_array_equal(y, out["y"].astype(int))
    np.testing.assert_array_equal(pre.decode_target(y), out["y"].to_numpy())
    np.testing.assert_array_equal(pre.decode_target(np.array([0.2, 0.7])), [False, True])
    np.testing.assert_array_equal(pre.decode_target(np.array([[0.2], [0.7]])), [False, True])


def test_save_and_load_give_identical_transforms(penguin_split, tmp_path):
    train, test, schema = penguin_split
    pre = Preprocessor.fit(train, schema, "impute")
    pre.save(tmp_path / "preprocessor.joblib")
    loaded = Preprocessor.load(tmp_path / "preprocessor.joblib")
    assert loaded.features == pre.features and loaded.describe() == pre.describe()
    assert loaded.schema == schema
    for frame in (train, test):
        np.testing.assert_array_equal(loaded.transform(frame)[0], pre.transform(frame)[0])
        assert loaded.transform(frame)[1] == pre.transform(frame)[1]
    np.testing.assert_array_equal(loaded.encode_target(test["species"]),
                                  pre.encode_target(test["species"]))
    joblib.dump({"a": 1}, tmp_path / "other.joblib")
    with pytest.raises(ClrpipeError) as err:
        Preprocessor.load(tmp_path / "other.joblib")
    assert str(err.value) == f"{tmp_path / 'other.joblib'}: not a saved clrpipe table preprocessor"


def test_regression_save_and_load_keep_the_target_scaling(tmp_path):
    out, schema, _, _ = prepared(small([0.5, 1.25, 2.0, 3.0] * 3))
    pre = Preprocessor.fit(out, schema, "refuse")
    pre.save(tmp_path / "p.joblib")
    loaded = Preprocessor.load(tmp_path / "p.joblib")
    assert (loaded.target_mean, loaded.target_std) == (pre.target_mean, pre.target_std)
    assert pre.features == ["x"]
    np.testing.assert_array_equal(loaded.decode_target(np.array([0.0])), [pre.target_mean])


def test_schema_round_trips_through_json(penguins):
    schema = penguins[1]
    assert TableSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema
    boolean = TableSchema("y", "binary", False, ("x",), (), (False, True))
    assert TableSchema.from_dict(json.loads(json.dumps(boolean.to_dict()))) == boolean
    with pytest.raises(ClrpipeError) as err:
        TableSchema.from_dict(schema.to_dict() | {"task": "ranking"})
    assert str(err.value) == (
        "table schema: task expected one of binary, multiclass, regression, got 'ranking'"
    )


# --- rows: duplicates, missing targets, ids and ignored columns -----------------------------------


def test_duplicates_by_id_and_exact_rows():
    frame = pd.DataFrame({
        "pid": [1, 1, 1, 2, 3, np.nan, np.nan],
        "note": ["a", "b", "c", "d", "e", "f", "g"],
        "x": [1.0, 1.0, 5.0, 1.0, 2.0, 3.0, 4.0],
        "y": ["a", "a", "b", "a", "b", "a", "b"],
    })
    out, schema, report, _ = prepared(frame, id_columns=["pid"], ignore_columns=["note"])
    # row 2 is row 1 again (the ignored column aside), row 3 repeats id 1 with other values;
    # missing ids are never duplicates of each other
    assert (report["dropped_duplicate_row"], report["dropped_duplicate_id"]) == (1, 1)
    assert (report["rows_in"], report["rows_out"], report["rows_dropped"]) == (7, 5, 2)
    assert list(out.columns) == ["x", "y"] and out["x"].tolist() == [1.0, 1.0, 2.0, 3.0, 4.0]
    assert schema.numeric == ("x",) and schema.categorical == ()

    _, _, report, _ = prepared(frame.drop(columns="pid"), ignore_columns=["note"])
    assert (report["dropped_duplicate_row"], report["dropped_duplicate_id"]) == (2, 0)
    _, _, report, _ = prepared(frame.drop(columns="pid"))
    assert (report["dropped_duplicate_row"], report["dropped_duplicate_id"]) == (0, 0)


def test_rows_without_a_target_are_dropped():
    frame = small(["a", None, "b", np.nan, "a", "b"])
    out, _, report, notes = prepared(frame)
    assert report["dropped_missing_target"] == 2 and report["rows_out"] == 4
    assert out["y"].tolist() == ["a", "b", "a", "b"] and out["x"].tolist() == [0, 2, 4, 5]
    assert notes[-1] == "dropped 2 row(s) with no 'y'"


def test_an_integer_target_with_gaps_keeps_integer_classes():
    out, schema, report, _ = prepared(small([0, np.nan, 1, 0, 1]))
    assert (schema.task, schema.classes, out["y"].dtype) == ("binary", (0, 1), np.int64)
    assert report["dropped_missing_target"] == 1
    pre = Preprocessor.fit(out, schema, "impute")
    np.testing.assert_array_equal(pre.encode_target(pd.Series([1.0, 0.0])), [1, 0])
    np.testing.assert_array_equal(pre.decode_target(np.array([1, 0])), [1, 0])


def test_categorical_can_be_declared_and_numbers_become_text():
    frame = pd.DataFrame({
        "code": [1.0, 2.0, np.nan, 1.0], "flag": [True, False, True, False],
        "x": ["1", "2.5", "3", "4"], "y": [0, 1, 0, 1],
    })
    out, schema, _, _ = prepared(frame, categorical=["code"])
    assert schema.categorical == ("code",) and schema.numeric == ("flag", "x")
    assert out["code"].tolist()[:2] == ["1", "2"] and pd.isna(out["code"][2])
    assert out["flag"].tolist() == [1.0, 0.0, 1.0, 0.0] and out["x"].tolist() == [1, 2.5, 3, 4]
    _, schema, _, _ = prepared(frame)
    assert schema.categorical == ("flag", "x") and schema.numeric == ("code",)


def test_many_levels_are_capped_and_an_identifier_left_out():
    rows = 200
    frame = pd.DataFrame({"city": [f"c{i % 40}" if i % 3 else "c0" for i in range(rows)],
                          "x": range(rows),
                          "ticket": [f"t{i}" for i in range(rows)], "y": [0, 1] * (rows // 2)})
    out, schema, report, notes = prepared(frame)
    assert schema.categorical == ("city",) and "ticket" not in out.columns
    assert notes[-2:] == [
        "column 'ticket' looks like an identifier (a distinct value in every row): left out; "
        "list it in data.categorical to use it",
        "column 'city' has 40 distinct values: one-hot encoded as its 31 most frequent and "
        "<other>",
    ]
    assert report["encoding"] == {
        "x": "number",
        "city": "one-hot, the 31 most frequent of 40 values in training + <other> (the rest "
                "and unseen values)",
        "ticket": "left out (id-like: 200 distinct values in as many rows)",
    }
    fitted = Preprocessor.fit(out, schema, "impute")
    assert fitted.encodings == {"city": {"levels": 40, "columns": 32, "other": 9}}
    assert len(fitted.features) == 1 + 32 and fitted.features[-1] == "city=<other>"
    x, done = fitted.transform(pd.DataFrame({"x": [1.0, 2.0], "city": ["never seen", "c0"]}))
    assert x[0, -1] == 1 and x[0, 1:-1].sum() == 0  # an unseen value is pooled, not dropped
    assert x[1, fitted.features.index("city=c0")] == 1 and done["unseen_categories"] == {
        "city": 1}
    kept, _, _, _ = prepared(frame, categorical=["city", "ticket"])
    assert "ticket" in kept.columns  # declared categorical: the user's choice stands


# --- bad configuration and bad tables: one line each ----------------------------------------------


def test_config_errors_name_the_key():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["u", "v"], "y": [0, 1]})
    fails(frame, "data.target: no column 'label' in t.csv; columns are a, b, y", target="label")
    fails(frame, "data.id_columns: no column 'id' in t.csv; columns are a, b, y",
          id_columns=["id"])
    fails(frame, "data.ignore_columns: no column 'c' in t.csv; columns are a, b, y",
          ignore_columns=["c"])
    fails(frame, "data.categorical: no column 'B' in t.csv (did you mean 'b'?); columns are "
          "a, b, y", categorical=["B"])
    wide = pd.DataFrame({f"c{i}": [0, 1] for i in range(35)})
    fails(wide, "data.target: no column 'y' in t.csv; columns are "
          + ", ".join(f"c{i}" for i in range(30)) + ", ... (5 more)")
    for key in ("id_columns", "ignore_columns", "categorical"):
        fails(frame, f"data.{key}: 'y' is the target (data.target); list feature columns only",
              **{key: ["y"]})
    fails(frame, "data.categorical: 'b' is also in data.ignore_columns; a column is a feature "
          "or left out, not both", categorical=["b"], ignore_columns=["b"])
    fails(frame, "t.csv: no feature columns left (every column is data.target, in "
          "data.id_columns or in data.ignore_columns)", id_columns=["a"], ignore_columns=["b"])


def test_target_errors():
    fails(small(["a"] * 4), "data.target: column 'y' in t.csv has one class ('a') in all 4 rows; "
          "expected at least 2 classes")
    fails(small([3] * 4), "data.target: column 'y' in t.csv has one class (3) in all 4 rows; "
          "expected at least 2 classes")
    fails(small([3.5] * 4), "data.target: column 'y' in t.csv has one value (3.5) in all 4 rows; "
          "expected at least 2 distinct values")
    fails(small([1, 1, 1]), "data.target: column 'y' in t.csv has one value (1) in all 3 rows; "
          "expected at least 2 distinct values", task="regression")
    fails(small([None, np.nan]), "data.target: column 'y' in t.csv has no values (all 2 rows "
          "missing); expected a target in every row")
    fails(small(["low", "high"]), "data.task: regression needs a numeric target, but 'y' in "
          "t.csv has text values (e.g. 'low'); set data.task to binary or multiclass, or null "
          "to infer", task="regression")
    fails(small([True, False]), "data.task: regression needs a numeric target, but 'y' in "
          "t.csv has boolean values (e.g. True); set data.task to binary or multiclass, or null "
          "to infer", task="regression")
    fails(small(["a", "b", "c"]), "data.task: binary needs 2 classes, but 'y' in t.csv has 3 "
          "('a', 'b', 'c'); set data.task to multiclass, or null to infer", task="binary")
    fails(small([1.0, 2.5]), "data.task: binary needs class labels (text, boolean or integers), "
          "but 'y' in t.csv has non-integer numbers (e.g. 2.5); set data.task to regression, or "
          "null to infer", task="binary")
    fails(small(pd.to_datetime(["2020-01-01", "2021-01-01"])), "data.target: column 'y' in "
          "t.csv has datetime64[us] values; expected text, boolean or numbers")


def test_column_errors():
    frame = pd.DataFrame({"a": ["1", "2", "x", "y"], "b": [1.0, 2, 3, 4], "y": [0, 1, 0, 1]})
    fails(frame, "t.csv: column 'a' is not numeric and not in data.categorical (2 non-number "
          "value(s), first in data row 3: 'x'); list it in data.categorical to one-hot encode "
          "it, or in data.ignore_columns to leave it out", categorical=["b"])
    frame["a"] = ["1", "2", "3", "?"]
    fails(frame, "t.csv: column 'a' is mostly numbers but not all (1 non-number value(s), first "
          "in data row 4: '?'); list it in data.categorical to one-hot encode it, or in "
          "data.ignore_columns to leave it out")
    assert prepared(frame, categorical=["a"])[1].categorical == ("a",)
    frame["a"] = pd.to_datetime(["2020-01-01"] * 4)
    fails(frame, "t.csv: column 'a' has datetime64[us] values, not numbers; list it in "
          "data.categorical to one-hot encode it, or in data.ignore_columns to leave it out")
    frame["a"] = [1.0, np.nan, np.inf, np.nan]
    fails(frame, "t.csv: column 'a' has 2 missing value(s) (first in data row 2); data.missing "
          "is refuse (set data.missing=impute to fill them from the training part)",
          missing="refuse")
    fails(frame, "t.csv: column 'a' has 1 infinite value(s) (first in data row 3); expected "
          "finite numbers")
    frame["a"] = np.nan
    fails(frame, "t.csv: column 'a' has no values (all 4 rows missing); list it in "
          "data.ignore_columns")
    fails(small([1.0, np.inf, 2.0]), "t.csv: column 'y' has 1 infinite value(s) (first in data "
          "row 2); expected finite numbers")
    text = pd.DataFrame({"c": ["u", None, "v", "u"], "y": [0, 1, 0, 1]})
    fails(text, "t.csv: column 'c' has 1 missing value(s) (first in data row 2); data.missing "
          "is refuse (set data.missing=impute to fill them from the training part)",
          missing="refuse")


def test_refuse_without_gaps_is_validated_strictly():
    frame = pd.DataFrame({"a": [1, 2, 3, 4], "c": ["u", "v", "u", "v"], "y": [0, 1, 0, 1]})
    out, schema, _, _ = prepared(frame, missing="refuse")
    strict = tables.frame_schema(schema, "refuse")
    strict.validate(out)
    with pytest.raises(Exception, match="non-nullable"):
        strict.validate(out.assign(a=[1.0, np.nan, 3.0, 4.0]))
    pre = Preprocessor.fit(out, schema, "refuse")
    assert pre.features == ["a", "c=u", "c=v"]
    with pytest.raises(ClrpipeError) as err:
        pre.transform(out.assign(a=[1.0, np.nan, 3.0, 4.0]))
    assert str(err.value) == "column 'a' has 1 missing value(s); data.missing is refuse"


# --- reading files --------------------------------------------------------------------------------


TEXT = b"a,b,y\n1,u,0\n2, v ,1\n3,,0\n"


def test_csv_is_read_with_text_trimmed_and_blanks_missing():
    frame = read_table(TEXT, "t.csv", None)
    assert list(frame.columns) == ["a", "b", "y"]
    assert frame["a"].tolist() == [1, 2, 3] and frame["b"].tolist()[:2] == ["u", "v"]
    assert pd.isna(frame["b"][2])
    assert read_table(b"\xef\xbb\xbf a , b\r\n1,2\r\n", "t.CSV", None).columns.tolist() == [
        "a", "b"]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
@pytest.mark.parametrize("source", ["t.csv.gz", "t.csv"])
def test_compressed_text_is_read(compress, source):
    pd.testing.assert_frame_equal(read_table(compress(TEXT), source, None),
                                  read_table(TEXT, "t.csv", None))


def test_bad_files_are_one_line():
    read_fails(b"", "data/raw/mine.csv", "data/raw/mine.csv: empty file; expected a header "
               "line and data rows")
    read_fails(b" \n\n", "mine.parquet", "mine.parquet: empty file; expected a header line and "
               "data rows")
    read_fails(gzip.compress(b""), "t.csv.gz", "t.csv.gz: empty file once decompressed; "
               "expected a header line and data rows")
    read_fails(b"a,b,y\n", "t.csv", "t.csv: no data rows after the header")
    read_fails(b"\na,b\n1,2\n", "t.csv", "t.csv: the first line is blank; expected a header "
               "line naming the columns")
    read_fails(b"a,,y\n1,2,3\n", "t.csv", "t.csv: column 2 of the header has no name; expected "
               "a header line naming every column")
    read_fails(b"a,b,a\n1,2,3\n", "t.csv", "t.csv: column 'a' appears more than once")
    read_fails(gzip.compress(TEXT)[:20], "t.csv.gz", "t.csv.gz: gzip-compressed but does not "
               "decompress (Compressed file ended before the end-of-stream marker was reached); "
               "expected a complete gzip file")
    read_fails("a,y\n1,2\n".encode("utf-16"), "data/raw/mine.csv",
               "data/raw/mine.csv: UTF-16 text (byte-order mark FF FE); expected UTF-8: re-save "
               "it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8 data/raw/mine.csv > "
               "data/raw/mine-utf8.csv)")
    read_fails("a,y\n1,2\n".encode("utf-16-le"), "mine.tsv",
               "mine.tsv: UTF-16 text without a byte-order mark (UTF-16LE, every other byte "
               "NUL); expected UTF-8: re-save it as UTF-8 (e.g. iconv -f UTF-16LE -t UTF-8 "
               "mine.tsv > mine-utf8.tsv)")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("mine.csv", TEXT)
    read_fails(archive.getvalue(), "mine.csv", "mine.csv: a zip archive containing mine.csv "
               "(starts with 50 4B), not a CSV table; extract the CSV first (unzip mine.csv) and "
               "set data.raw to that file")
    read_fails(b"\x28\xb5\x2f\xfd" + b"\x00" * 20, "t.csv.zst", "t.csv.zst: zstd-compressed "
               "(starts with 28 B5 2F FD), not a CSV table; decompress it first (zstd -dc "
               "t.csv.zst > t.csv) and set data.raw to that file")
    read_fails(b"a,y\n\x00\x01\x02,1\n", "t.csv", "t.csv: binary content (NUL byte); expected "
               "a text CSV table")
    read_fails(b"a,y\n\xe9t\xe9,1\n", "t.tsv", "t.tsv: not UTF-8 text (byte 4); expected a "
               "text TSV table (re-save it as UTF-8)")
    read_fails(b"a,y\n1,2\n1,2,3,4\n", "t.csv", "t.csv: not a ','-separated CSV table (Error "
               "tokenizing data. C error: Expected 2 fields in line 3, saw 4); expected a header "
               "line and rows of as many fields (set data.format if the file is another kind)")
    read_fails(b"a,y\n1,2,3\n4,5,6\n", "t.csv", "t.csv: the data rows have more fields than "
               "the header's 2 names; expected a header line naming every column (or no trailing "
               "separator)")


def test_kind_mismatches_say_which_key_to_set():
    buffer = io.BytesIO()
    pd.DataFrame({"a": [1], "y": [0]}).to_parquet(buffer)
    parquet = buffer.getvalue()
    read_fails(parquet, "t.csv", "t.csv: a Parquet file, not a CSV table; set "
               "data.format=parquet (or name the file .parquet)")
    assert read_table(parquet, "t.csv", "parquet").shape == (1, 2)
    read_fails(TEXT, "t.parquet", "t.parquet: not a Parquet file (it does not start with PAR1) "
               "(it looks like text: set data.format=csv or tsv); expected Parquet "
               "(data.format=parquet or a .parquet/.pq name)")
    with pytest.raises(ClrpipeError, match=r"^t\.parquet: not a readable Parquet file \(.*\); "
                       r"expected a complete Parquet table$"):
        read_table(parquet[:60], "t.parquet", None)
    read_fails(b"a\tb\ty\n1\t2\t3\n", "t.csv", "t.csv: one column read with separator ',', but "
               "the header has '\\t'; set data.format=tsv")
    read_fails(b"a,b,y\n1,2,3\n", "t.tsv", "t.tsv: one column read with separator '\\t', but "
               "the header has ','; set data.format=csv")
    read_fails(b"a;b;y\n1;2;3\n", "t.csv", "t.csv: one column read with separator ',', but the "
               "header has ';'; re-save the table ',' separated (csv) or tab separated (tsv)")


def test_unknown_suffix_needs_data_format():
    read_fails(TEXT, "data/raw/mine.txt", "data/raw/mine.txt: unknown table kind (suffix "
               "'.txt'); expected .csv, .tsv, .tab, .parquet or .pq (optionally .gz, .bz2 or "
               ".xz), or set data.format to csv, tsv or parquet")
    read_fails(TEXT, "data/raw/mine", "data/raw/mine: unknown table kind (no suffix); expected "
               ".csv, .tsv, .tab, .parquet or .pq (optionally .gz, .bz2 or .xz), or set "
               "data.format to csv, tsv or parquet")
    read_fails(gzip.compress(TEXT), "mine.gz", "mine.gz: unknown table kind (suffix '.gz'); "
               "expected .csv, .tsv, .tab, .parquet or .pq (optionally .gz, .bz2 or .xz), or set "
               "data.format to csv, tsv or parquet")
    workbook = io.BytesIO()
    with zipfile.ZipFile(workbook, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    read_fails(TEXT, "v1.2/mine.txt.gz", "v1.2/mine.txt.gz: unknown table kind (suffix "
               "'.txt.gz'); expected .csv, .tsv, .tab, .parquet or .pq (optionally .gz, .bz2 or "
               ".xz), or set data.format to csv, tsv or parquet")
    read_fails(workbook.getvalue(), "mine.xlsx", "mine.xlsx: unknown table kind (suffix "
               "'.xlsx'); expected .csv, .tsv, .tab, .parquet or .pq (optionally .gz, .bz2 or "
               ".xz), or set data.format to csv, tsv or parquet (it is an Excel workbook: export "
               "the sheet as CSV)")
    assert read_table(TEXT, "data/raw/mine.txt", "csv").shape == (3, 3)


# --- splitting ------------------------------------------------------------------------------------


def test_check_splittable_classification_minimum():
    schema = TableSchema("y", "multiclass", True, ("x",), (), ("a", "b", "c"))
    ok = small(["a"] * 5 + ["b"] * 5 + ["c"] * 5)
    tables.check_splittable(ok, schema, 0.2, "t.csv")
    with pytest.raises(ClrpipeError) as err:
        tables.check_splittable(ok.iloc[1:], schema, 0.2, "t.csv")
    assert str(err.value) == (
        "t.csv: too few rows to split (14 rows: 4 of class 'a'); a stratified split with "
        "split.test_size=0.2 needs at least 5 rows of each 'y' class (15 in all) so that train "
        "and test both get every class"
    )
    with pytest.raises(ClrpipeError, match=r"\(3 rows: 1 of class 'b', 0 of class 'c'\); .* "
                       r"needs at least 2 rows of each 'y' class \(6 in all\)"):
        tables.check_splittable(small(["a", "a", "b"]), schema, 0.5, "t.csv")


def test_check_splittable_regression_minimum():
    assert [tables.regression_minimum(t) for t in (0.2, 0.5, 0.05, 0.95)] == [10, 10, 21, 40]
    schema = TableSchema("y", "regression", True, ("x",), (), None)
    tables.check_splittable(small(np.linspace(0, 1, 21)), schema, 0.05, "t.csv")
    with pytest.raises(ClrpipeError) as err:
        tables.check_splittable(small(np.linspace(0, 1, 20)), schema, 0.05, "t.csv")
    assert str(err.value) == (
        "t.csv: too few rows to split (20 rows); a split with split.test_size=0.05 needs at "
        "least 21 rows so that train and test get at least 2 each and training keeps a "
        "validation slice"
    )
    with pytest.raises(ClrpipeError, match=r"\(9 rows\).* needs at least 10 rows"):
        tables.check_splittable(small(np.linspace(0, 1, 9)), schema, 0.2, "t.csv")

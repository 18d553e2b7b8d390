"""The `prepare` and `split` stages through the real `clrpipe` CLI, on files made from the real
table: odd ones accepted with the same result, bad ones refused with one line and no output."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from clrpipe import cli, data, download
from clrpipe.errors import ClrpipeError
from clrpipe.params import DataParams

OUTPUTS = ("data/prepared/cardio.parquet", "metrics/prepare.json")
SAMPLE_ROWS = 3000


@pytest.fixture(scope="module")
def sample_lines(cardio_bytes) -> list[str]:
    """The header and the first rows of the real table, as text lines."""
    lines = cardio_bytes.decode().splitlines()
    return lines[: SAMPLE_ROWS + 1]


def columns(lines: list[str]) -> list[list[str]]:
    return [line.split(";") for line in lines]


def join(cells: list[list[str]], sep: str = ";", newline: str = "\n") -> bytes:
    return (newline.join(sep.join(row) for row in cells) + newline).encode()


def run_prepare(project: Path, raw: bytes, *overrides: str):
    (project / "input.csv").write_bytes(raw)
    result = CliRunner().invoke(cli.main, ["prepare", "data.raw=input.csv", *overrides])
    return result


def assert_refused(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: input.csv: ")
    for fragment in fragments:
        assert fragment in lines[0]
    for output in OUTPUTS:
        assert not Path(output).exists()
    leftovers = [p for p in Path().rglob(".*.tmp")]
    assert leftovers == []


def prepared_features() -> pd.DataFrame:
    return pd.read_parquet(OUTPUTS[0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample_lines) -> pd.DataFrame:
    """Features prepared from the unmodified sample, to compare accepted variants against."""
    frame, report, _ = data.prepare(join(columns(sample_lines)), "sample.csv", data.Limits())
    assert report["rows_in"] == SAMPLE_ROWS
    return frame


def _comma(cells):
    return join(cells, sep=",")


def _crlf(cells):
    return join(cells, newline="\r\n")


def _spaced_header(cells):
    return join([[f"  {name} " for name in cells[0]], *cells[1:]])


def _shuffled_columns(cells):
    order = list(range(len(cells[0])))
    random.Random(3).shuffle(order)
    return join([[row[i] for i in order] for row in cells])


def _bom_and_upper_case(cells):
    return b"\xef\xbb\xbf" + join([[name.upper() for name in cells[0]], *cells[1:]])


ACCEPTED = {
    "comma separated": _comma,
    "CRLF line ends": _crlf,
    "spaces around header names": _spaced_header,
    "columns in another order": _shuffled_columns,
    "UTF-8 BOM and upper-case header": _bom_and_upper_case,
}


@pytest.mark.parametrize("variant", ACCEPTED)
def test_odd_but_valid_files_give_the_same_features(project, sample_lines, reference, variant):
    result = run_prepare(project, ACCEPTED[variant](columns(sample_lines)))
    assert result.exit_code == 0, result.output
    assert "note:" not in result.stderr
    pd.testing.assert_frame_equal(prepared_features(), reference)
    report = json.loads(Path(OUTPUTS[1]).read_text())
    assert report["rows_in"] == SAMPLE_ROWS and report["source"] == "input.csv"


def test_extra_columns_are_ignored_and_said_once(project, sample_lines, reference):
    cells = columns(sample_lines)
    cells = [[*row, "x" if i == 0 else "1", "y" if i == 0 else "z"] for i, row in enumerate(cells)]
    result = run_prepare(project, join(cells))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("ignoring extra column(s) x, y") == 1
    pd.testing.assert_frame_equal(prepared_features(), reference)


def _set_cell(cells, column: str, row: int, value: str):
    index = cells[0].index(column)
    cells[row][index] = value
    return join(cells)


REFUSED = {
    "empty file": (lambda cells: b"", ["empty file"]),
    "header only": (lambda cells: join(cells[:1]), ["no data rows after the header"]),
    "binary garbage": (
        lambda cells: random.Random(0).randbytes(4096),
        ["binary content"],
    ),
    "latin-1 text": (
        lambda cells: join(cells).replace(b"id;", "é;".encode("latin-1"), 1),
        ["not UTF-8 text"],
    ),
    "missing column": (
        lambda cells: join([row[:5] + row[6:] for row in cells]),
        ["missing column(s) 'ap_hi'"],
    ),
    "text in a numeric column": (
        lambda cells: _set_cell(cells, "weight", 7, "heavy"),
        ["column 'weight' expected numbers", "'heavy'"],
    ),
    "missing value": (
        lambda cells: _set_cell(cells, "ap_lo", 5, ""),
        ["column 'ap_lo' has 1 missing value(s)", "data row 5", "does not impute"],
    ),
    "target outside 0/1": (
        lambda cells: _set_cell(cells, "cardio", 9, "2"),
        ["column 'cardio' expected 0 or 1", "data row 9"],
    ),
    "one class only": (
        lambda cells: join([cells[0], *[[*r[:-1], "1"] for r in cells[1:]]]),
        ["column 'cardio' expected both classes 0 and 1"],
    ),
    "unknown gender code": (
        lambda cells: _set_cell(cells, "gender", 3, "3"),
        ["column 'gender' expected 1 (women) or 2 (men)", "data row 3"],
    ),
    "duplicated column": (
        lambda cells: join([[*row, row[1]] for row in cells]),
        ["column 'age' appears more than once"],
    ),
}


@pytest.mark.parametrize("variant", REFUSED)
def test_bad_files_are_refused_with_one_line_and_no_output(project, sample_lines, variant):
    make, fragments = REFUSED[variant]
    result = run_prepare(project, make(columns(sample_lines)))
    assert_refused(result, *fragments)


def test_a_bad_file_does_not_replace_earlier_outputs(project, sample_lines):
    assert run_prepare(project, join(columns(sample_lines))).exit_code == 0
    before = {name: Path(name).read_bytes() for name in OUTPUTS}
    result = run_prepare(project, join(columns(sample_lines)[:1]))
    assert result.exit_code == 1
    assert {name: Path(name).read_bytes() for name in OUTPUTS} == before


def test_missing_file_offline_says_where_to_put_it(project):
    result = CliRunner().invoke(
        cli.main, ["prepare", "data.raw=nowhere/cardio.csv"], env={"KAGGLEHUB_CACHE": "kh"}
    )
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.count("\n") == 0
    assert line.startswith("error: nowhere/cardio.csv: not found and not downloadable (")
    assert "kaggle.com/datasets/sulianova/cardiovascular-disease-dataset" in line
    assert str(project / "nowhere" / "cardio.csv") in line
    assert not Path("nowhere/cardio.csv").exists()


def test_download_with_wrong_checksum_is_refused(project, sample_lines):
    """kagglehub cannot reach Kaggle here, so the download itself is replaced by a folder."""
    folder = project / "download"
    folder.mkdir()
    (folder / "cardio_train.csv").write_bytes(join(columns(sample_lines)))
    source = DataParams(
        raw=Path("data/raw/cardio.csv"),
        kaggle_dataset="sulianova/cardiovascular-disease-dataset",
        kaggle_file="cardio_train.csv",
        sha256="0" * 64,
    )
    with pytest.raises(ClrpipeError, match=r"does not match data\.sha256 0000"):
        download.fetch_raw(source, download=lambda dataset: folder)
    assert not source.raw.exists()
    right = DataParams(**{**source.model_dump(), "sha256": _sha(folder)})
    download.fetch_raw(right, download=lambda dataset: folder)
    assert right.raw.read_bytes() == (folder / "cardio_train.csv").read_bytes()


def _sha(folder: Path) -> str:
    import hashlib

    return hashlib.sha256((folder / "cardio_train.csv").read_bytes()).hexdigest()


def test_bad_limits_in_config_are_refused_naming_the_key(project, sample_lines):
    result = run_prepare(project, join(columns(sample_lines)), "data.limits.ap_hi=[250,60]")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: params.yaml: data.limits.ap_hi: expected [low, high] with 0 < low < high, "
        "got [250.0, 60.0]"
    )
    assert not any(Path(o).exists() for o in OUTPUTS)


def test_real_prepare_writes_the_report(real_split):
    report = json.loads((real_split / "metrics/prepare.json").read_text())
    assert report["sha256"] == "21a705d23381b0dfd6a6416da701b490744f1fc3b47e9ff3db3968c420ffa10c"
    assert report["ap_lo_above_ap_hi_swapped"] == 128
    assert report["rows_dropped"] == 92 and report["rows_out"] == 69908


def test_split_is_stratified_and_scaled_on_train_only(real_split):
    train = pd.read_parquet(real_split / "data/split/train.parquet")
    test = pd.read_parquet(real_split / "data/split/test.parquet")
    scaler = json.loads((real_split / "data/split/scaler.json").read_text())
    assert (len(train), len(test)) == (55926, 13982)
    assert train.cardio.mean() == pytest.approx(test.cardio.mean(), abs=1e-3)
    features = list(data.FEATURES)
    assert scaler["features"] == features
    np.testing.assert_allclose(train[features].mean(), 0, atol=1e-4)
    np.testing.assert_allclose(train[features].std(ddof=0), 1, atol=1e-3)
    assert np.abs(test[features].mean()).max() > 1e-3
    prepared = pd.read_parquet(real_split / "data/prepared/cardio.parquet")
    raw_train_mean = (train[features] * scaler["scale"] + scaler["mean"]).mean()
    assert raw_train_mean["ap_hi"] == pytest.approx(scaler["mean"][features.index("ap_hi")])
    assert raw_train_mean["ap_hi"] != pytest.approx(prepared["ap_hi"].mean(), abs=1e-6)


def test_logistic_regression_on_split_reaches_72_percent(real_split):
    train = pd.read_parquet(real_split / "data/split/train.parquet")
    test = pd.read_parquet(real_split / "data/split/test.parquet")
    features = list(data.FEATURES)
    model = LogisticRegression(max_iter=1000).fit(train[features], train.cardio)
    accuracy = model.score(test[features], test.cardio)
    assert accuracy >= 0.72


def test_split_is_deterministic_per_seed(real_split, monkeypatch):
    monkeypatch.chdir(real_split)
    first = pd.read_parquet("data/split/test.parquet")
    runner = CliRunner()
    assert runner.invoke(cli.main, ["split", "split.seed=42", "split.dir=again"]).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_parquet("again/test.parquet"), first)
    assert runner.invoke(cli.main, ["split", "split.seed=7", "split.dir=other"]).exit_code == 0
    assert not pd.read_parquet("other/test.parquet").equals(first)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("split.test_size=1.5", "split.test_size: input should be less than 1, got 1.5"),
        ("split.seed=abc", "split.seed: input should be a valid integer"),
        ("split.sed=1", "override 'split.sed': no such key in params.yaml"),
    ],
)
def test_bad_split_config_is_refused_naming_the_key(real_split, monkeypatch, override, message):
    monkeypatch.chdir(real_split)
    result = CliRunner().invoke(cli.main, ["split", override, "split.dir=bad"])
    assert result.exit_code == 1
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not Path("bad").exists()


def test_fetch_copies_a_local_copy_and_checks_it(project, cardio_csv):
    runner = CliRunner()
    result = runner.invoke(cli.main, ["fetch"], env={"CLRPIPE_CARDIO_CSV": str(cardio_csv)})
    assert result.exit_code == 0, result.output
    assert Path("data/raw/cardio_train.csv").read_bytes() == cardio_csv.read_bytes()
    again = runner.invoke(cli.main, ["fetch"], env={"CLRPIPE_CARDIO_CSV": "/nowhere.csv"})
    assert "data/raw/cardio_train.csv present; its sha256 matches data.sha256" in again.output

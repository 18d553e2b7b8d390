"""The `prepare` and `split` stages through the real `clrpipe` CLI, on files made from the real
table: odd ones accepted with the same result, bad ones refused with one line and no output."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import cli
from clrpipe.pipeline.data import cardio, download
from clrpipe.pipeline.params import CardioData

OUTPUTS = ("data/prepared/table.parquet", "metrics/prepare.json")
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
    assert temporaries() == []


def temporaries(root: Path = Path()) -> list[Path]:
    """atomic_outputs' temporaries (`.<name>.<random><suffix>`) left anywhere under root."""
    return [p for p in root.rglob(".*") if p.is_file()]


def prepared_features() -> pd.DataFrame:
    return pd.read_parquet(OUTPUTS[0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample_lines) -> pd.DataFrame:
    """Features prepared from the unmodified sample, to compare accepted variants against."""
    frame, report, _ = cardio.prepare(join(columns(sample_lines)), "sample.csv", cardio.Limits())
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
    "NaN in weight": (
        lambda cells: _set_cell(cells, "weight", 7, "NaN"),
        ["column 'weight' has 1 missing value(s) (first in data row 7: 'NaN')"],
    ),
    "NaN in a coded column": (
        lambda cells: _set_cell(cells, "smoke", 4, "nan"),
        ["column 'smoke' has 1 missing value(s) (first in data row 4: 'nan')"],
    ),
    "blank id": (
        lambda cells: _set_cell(cells, "id", 2, ""),
        ["column 'id' has 1 missing value(s) (first in data row 2: blank); expected an id"],
    ),
    "gzip-compressed": (
        lambda cells: gzip.compress(join(cells)),
        ["gzip-compressed (starts with 1F 8B)", "decompress it first"],
    ),
    "UTF-16 with BOM": (
        lambda cells: join(cells).decode().encode("utf-16"),
        ["UTF-16 text (byte-order mark FF FE)", "re-save it as UTF-8"],
    ),
    "UTF-16 without BOM": (
        lambda cells: join(cells).decode().encode("utf-16-be"),
        ["UTF-16 text without a byte-order mark (UTF-16BE", "re-save it as UTF-8"],
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


def test_missing_file_offline_says_where_to_put_it(project, monkeypatch):
    monkeypatch.delenv("CLRPIPE_CARDIO_CSV", raising=False)
    result = CliRunner().invoke(cli.main, ["prepare", "data.raw=nowhere/cardio.csv"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: nowhere/cardio.csv: not found; run `clrpipe fetch` first")
    result = CliRunner().invoke(
        cli.main, ["fetch", "data.raw=nowhere/cardio.csv"], env={"KAGGLEHUB_CACHE": "kh"}
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
    source = CardioData(
        raw=Path("data/raw/cardio.csv"),
        kaggle_dataset="sulianova/cardiovascular-disease-dataset",
        kaggle_file="cardio_train.csv",
        sha256="0" * 64,
    )
    with pytest.raises(ClrpipeError, match=r"does not match data\.sha256 0000"):
        download.fetch_raw(source, download=lambda dataset: folder)
    assert not source.raw.exists()
    right = CardioData(**{**source.model_dump(), "sha256": _sha(folder)})
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
    features = list(cardio.FEATURES)
    assert scaler["features"] == features
    np.testing.assert_allclose(train[features].mean(), 0, atol=1e-4)
    np.testing.assert_allclose(train[features].std(ddof=0), 1, atol=1e-3)
    assert np.abs(test[features].mean()).max() > 1e-3
    prepared = pd.read_parquet(real_split / "data/prepared/table.parquet")
    raw_train_mean = (train[features] * scaler["scale"] + scaler["mean"]).mean()
    assert raw_train_mean["ap_hi"] == pytest.approx(scaler["mean"][features.index("ap_hi")])
    assert raw_train_mean["ap_hi"] != pytest.approx(prepared["ap_hi"].mean(), abs=1e-6)


def test_logistic_regression_on_split_reaches_72_percent(real_split):
    train = pd.read_parquet(real_split / "data/split/train.parquet")
    test = pd.read_parquet(real_split / "data/split/test.parquet")
    features = list(cardio.FEATURES)
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
        ("split.seed=abc", "split.seed: expected an integer, got 'abc'"),
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


CLRPIPE = Path(sys.executable).with_name("clrpipe")


def cli_in(project: Path, *args: str) -> subprocess.CompletedProcess:
    """The real `clrpipe` console script, as a user runs it, in the project folder."""
    return subprocess.run(
        [str(CLRPIPE), *args], cwd=project, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("kind", ["gzip", "UTF-16", "folder"])
def test_clrpipe_prepare_refuses_gzip_utf16_and_a_folder_in_one_line(project, sample_lines, kind):
    """Through the real console script: one line on stderr, nothing on stdout, exit 1, no file
    written (before: a folder was "not found" and sent to Kaggle; UTF-16 and gzip were
    "binary content")."""
    text = join(columns(sample_lines))
    if kind == "folder":
        (project / "input").mkdir()
        (project / "input" / "cardio_train.csv").write_bytes(text)
        raw, expected = "input", (
            "error: input: is a folder; data.raw must be the path of the CSV file "
            "(e.g. data.raw=input/cardio_train.csv)"
        )
    else:
        name = {"gzip": "input/cardio_train.csv.gz", "UTF-16": "input/cardio_train.csv"}[kind]
        (project / "input").mkdir()
        (project / name).write_bytes(
            gzip.compress(text) if kind == "gzip" else text.decode().encode("utf-16")
        )
        raw = name
        expected = {
            "gzip": (
                f"error: {name}: gzip-compressed (starts with 1F 8B), not a CSV table; "
                f"decompress it first (gzip -dc {name} > cardio_train.csv) and use that file"
            ),
            "UTF-16": (
                f"error: {name}: UTF-16 text (byte-order mark FF FE); expected UTF-8: re-save it "
                f"as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8 {name} > cardio_train.csv)"
            ),
        }[kind]
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    done = cli_in(project, "prepare", f"data.raw={raw}")
    assert done.returncode == 1, done.stderr
    assert done.stderr == expected + "\n"
    assert done.stdout == ""
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before


def test_a_folder_given_to_fetch_is_named_a_folder_too(project):
    Path("data/raw").mkdir(parents=True)
    result = CliRunner().invoke(cli.main, ["fetch", "data.raw=data/raw"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: data/raw: is a folder; data.raw must be the path of the CSV file "
        "(e.g. data.raw=data/raw/cardio_train.csv)\n"
    )
    assert list(Path("data/raw").iterdir()) == []


def test_an_unreadable_raw_file_is_refused_in_one_line(project, sample_lines, monkeypatch):
    """Permission bits do not stop root (these tests run as root), so the read itself fails."""
    Path("input.csv").write_bytes(join(columns(sample_lines)))

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    result = CliRunner().invoke(cli.main, ["prepare", "data.raw=input.csv"])
    assert result.exit_code == 1
    assert result.stderr == "error: input.csv: cannot read it (Permission denied)\n"


def scaled_rows(frame: pd.DataFrame) -> set[tuple]:
    return set(frame.itertuples(index=False, name=None))


def test_duplicated_rows_are_dropped_before_the_split(project, sample_lines):
    """A table with 30% duplicated rows (exact copies and conflicting records of an id): the
    report counts them, the prepared table is the one without them, and no test row has an
    identical row in train."""
    header, *rows = columns(sample_lines)
    base = rows[:2100]
    rng = random.Random(5)
    copies = [list(r) for r in rng.choices(base, k=600)]
    weight = header.index("weight")
    conflicting = [list(r) for r in rng.sample(base, k=300)]
    for r in conflicting:
        r[weight] = f"{float(r[weight]) + 1:g}"
    extra = copies + conflicting
    rng.shuffle(extra)
    table = [header, *base, *extra]
    assert len(extra) / (len(table) - 1) == 0.3
    result = run_prepare(project, join(table))
    assert result.exit_code == 0, result.output
    report = json.loads(Path(OUTPUTS[1]).read_text())
    assert report["rows_in"] == 3000
    assert report["dropped_duplicate_row"] == 600 and report["dropped_duplicate_id"] == 300
    assert report["rows_in"] == report["rows_out"] + report["rows_dropped"]
    expected, alone, _ = cardio.prepare(join([header, *base]), "base.csv", cardio.Limits())
    assert report["rows_out"] == alone["rows_out"] == len(expected)
    pd.testing.assert_frame_equal(prepared_features(), expected)

    assert CliRunner().invoke(cli.main, ["split"]).exit_code == 0
    train = pd.read_parquet("data/split/train.parquet")
    test = pd.read_parquet("data/split/test.parquet")
    assert len(train) + len(test) == report["rows_out"]
    assert scaled_rows(train).isdisjoint(scaled_rows(test))
    assert len(scaled_rows(train)) == len(train) and len(scaled_rows(test)) == len(test)


def tiny(sample_lines: list[str], zeros: int, ones: int) -> bytes:
    """The first rows of each class from the real sample (prepare keeps them all)."""
    header, *rows = columns(sample_lines)
    kept = []
    for cls, count in (("0", zeros), ("1", ones)):
        kept += [r for r in rows if r[-1] == cls][:count]
    return join([header, *kept])


def test_a_table_too_small_to_split_is_refused_at_split_in_one_line(project, sample_lines):
    """Before: prepare accepted a 5-row table and split raised a 38-line sklearn traceback."""
    result = run_prepare(project, tiny(sample_lines, 3, 2))
    assert result.exit_code == 0, result.output
    assert json.loads(Path(OUTPUTS[1]).read_text())["rows_out"] == 5
    result = CliRunner().invoke(cli.main, ["split"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: data/prepared/table.parquet: too few rows to split (5 rows: 3 of class 0, 2 of "
        "class 1); a stratified split with split.test_size=0.2 needs at least 5 rows of each "
        "'cardio' class (10 in all) so that train and test both get both classes\n"
    )
    assert not Path("data/split").exists()


@pytest.mark.parametrize(
    ("test_size", "zeros", "ones", "ok"),
    [(0.2, 5, 5, True), (0.2, 5, 4, False), (0.5, 2, 2, True), (0.25, 4, 9, True),
     (0.25, 3, 9, False)],
)
def test_the_split_minimum_is_exact_at_the_boundary(
    project, sample_lines, test_size, zeros, ones, ok
):
    assert run_prepare(project, tiny(sample_lines, zeros, ones)).exit_code == 0
    result = CliRunner().invoke(cli.main, ["split", f"split.test_size={test_size}"])
    if not ok:
        assert result.exit_code == 1 and "too few rows to split" in result.stderr
        assert result.stderr.count("\n") == 1
        assert not Path("data/split").exists()
        return
    assert result.exit_code == 0, result.output
    train = pd.read_parquet("data/split/train.parquet")
    test = pd.read_parquet("data/split/test.parquet")
    assert set(train.cardio) == set(test.cardio) == {0, 1}


def test_split_refuses_a_prepared_file_that_is_not_parquet(project):
    Path("data/prepared").mkdir(parents=True)
    Path("data/prepared/table.parquet").write_text("not parquet\n")
    result = CliRunner().invoke(cli.main, ["split"])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith("error: data/prepared/table.parquet: not a readable Parquet table (")
    assert line.endswith("); rerun `clrpipe prepare`")
    assert not Path("data/split").exists()

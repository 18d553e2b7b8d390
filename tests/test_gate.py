"""The regression gate: passing and failing on a real run's metrics, against a git revision
through a real `dvc metrics diff`, bad reference files; and the benchmark's JSON it reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import cli
from clrpipe.pipeline.comparison import gate
from tests.conftest import REPO

PINNED = ("schedule.initial_learning_rate=1e-4", "schedule.maximal_learning_rate=1e-2")
GIT = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid"]


def run_gate(*args: str):
    return CliRunner().invoke(cli.main, ["gate", *args])


def write(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content))
    return path


def train_clr(*overrides: str) -> dict:
    result = CliRunner().invoke(
        cli.main,
        ["train", "clr", "train.clr.epochs=1", *PINNED, "tracking.enabled=false", *overrides],
    )
    assert result.exit_code == 0, result.output
    return json.loads(Path("metrics/train_clr.json").read_text())


def table_row(output: str, metric: str) -> list[str]:
    (line,) = [line for line in output.splitlines() if line.startswith(f"| `{metric}` |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.fixture
def clr_metrics(trained_project) -> dict:
    """metrics/train_clr.json of a real one-epoch CLR training on the real split."""
    return train_clr()


def test_gate_passes_when_the_run_reaches_the_reference(clr_metrics, tmp_path):
    accuracy = clr_metrics["test_accuracy"]
    reference = write(tmp_path / "reference.json", {"checks": [
        {"metric": "train_clr.test_accuracy", "reference": accuracy + 0.005, "tolerance": 0.01},
        {"metric": "train_clr.epochs", "min": 1, "max": 1},
        {"metric": "bench.epoch.ratio_median", "max": 0.5},
    ]})
    bench = write(tmp_path / "bench.json", {"epoch": {"ratio_median": 0.28, "identical": True}})

    result = run_gate("--reference", str(reference), "--bench", str(bench))

    assert result.exit_code == 0, result.output
    assert result.output.startswith("**Gate passed: 3 checks within tolerance**")
    assert table_row(result.output, "train_clr.test_accuracy") == [
        "`train_clr.test_accuracy`", f"{accuracy + 0.005:.4g}",
        f"-0.01 (≥ {accuracy - 0.005:.4g})", f"{accuracy:.4g}", "pass",
    ]
    assert table_row(result.output, "bench.epoch.ratio_median")[2:] == ["≤ 0.5", "0.28", "pass"]


def test_gate_fails_on_raised_reference_and_slowed_epoch(clr_metrics, tmp_path):
    accuracy = clr_metrics["test_accuracy"]
    reference = write(tmp_path / "reference.json", {"checks": [
        {"metric": "train_clr.test_accuracy", "reference": accuracy + 0.05, "tolerance": 0.01},
        {"metric": "train_clr.epochs", "min": 1},
        {"metric": "bench.epoch.ratio_median", "max": 0.5, "note": "fast path lost"},
        {"metric": "train_baseline.test_accuracy", "reference": 0.73, "tolerance": 0.01},
    ]})
    # A slowed epoch: what the benchmark measures when the fast path is gone (ratio ~1).
    slowed = write(tmp_path / "bench.json", {"epoch": {"ratio_median": 0.97, "identical": True}})

    result = run_gate("--reference", str(reference), "--bench", str(slowed))

    assert result.exit_code == 1
    assert result.output.startswith("**Gate failed: 3 of 4 checks regressed**")
    assert table_row(result.output, "train_clr.test_accuracy") == [
        "`train_clr.test_accuracy`", f"{accuracy + 0.05:.4g}",
        f"-0.01 (≥ {accuracy + 0.04:.4g})", f"{accuracy:.4g}", "**FAIL**",
    ]
    assert table_row(result.output, "bench.epoch.ratio_median")[2:] == [
        "≤ 0.5", "0.97", "**FAIL** (fast path lost)"
    ]
    assert table_row(result.output, "train_baseline.test_accuracy")[3:] == [
        "—", "**FAIL** (missing)"
    ]
    assert table_row(result.output, "train_clr.epochs")[4] == "pass"


def test_benchmark_checks_are_skipped_without_a_benchmark_file(clr_metrics, tmp_path):
    reference = write(tmp_path / "reference.json", {"checks": [
        {"metric": "train_clr.test_accuracy", "reference": clr_metrics["test_accuracy"],
         "tolerance": 0.01},
        {"metric": "bench.epoch.ratio_median", "max": 0.5},
    ]})
    result = run_gate("--reference", str(reference))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("**Gate passed: 1 checks within tolerance**")
    assert table_row(result.output, "bench.epoch.ratio_median")[3:] == [
        "—", "skipped (not measured)"
    ]


@pytest.fixture
def repo_with_committed_run(trained_project) -> dict:
    """A git + DVC repository whose HEAD holds a real two-epoch CLR run's metrics."""
    (trained_project / "dvc.yaml").write_text(
        "stages:\n  train_clr:\n    cmd: clrpipe train clr\n    metrics:\n"
        "      - metrics/train_clr.json:\n          cache: false\n"
    )
    (trained_project / ".gitignore").write_text("/data/\n/models/\n/plots/\n/mlflow.db\n")
    committed = train_clr("train.clr.epochs=2")
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "two-epoch run"], check=True)
    return committed


def test_gate_against_a_revision_tables_the_diff_and_fails_per_tolerance(
    repo_with_committed_run, tmp_path
):
    old = repo_with_committed_run
    # The regression: one epoch at a hundredth of the learning rate.
    new = train_clr("schedule.initial_learning_rate=1e-6", "schedule.maximal_learning_rate=1e-4")
    assert new["test_accuracy"] < old["test_accuracy"] - 0.02

    plain = run_gate("--against", "HEAD")
    assert plain.exit_code == 0, plain.output
    assert plain.output.startswith("**Metrics: workspace against `HEAD`**")
    change = new["test_accuracy"] - old["test_accuracy"]
    assert table_row(plain.output, "train_clr.test_accuracy") == [
        "`train_clr.test_accuracy`", f"{old['test_accuracy']:.4g}",
        f"{new['test_accuracy']:.4g}", f"{change:+.4g}",
    ]
    assert table_row(plain.output, "train_clr.epochs")[1:3] == ["2", "1"]

    reference = write(tmp_path / "reference.json", {"checks": [
        {"metric": "train_clr.test_accuracy", "reference": 0.0, "tolerance": 0.01},
        {"metric": "bench.epoch.ratio_median", "max": 0.5},
    ]})
    gated = run_gate("--against", "HEAD", "--reference", str(reference))
    assert gated.exit_code == 1
    assert "| check | reference (HEAD) | tolerance | actual | result |" in gated.output
    gate_table = gated.output.split("| check |")[1]
    assert table_row(gate_table, "train_clr.test_accuracy")[1:] == [
        f"{old['test_accuracy']:.4g}", f"-0.01 (≥ {old['test_accuracy'] - 0.01:.4g})",
        f"{new['test_accuracy']:.4g}", "**FAIL**",
    ]


def test_unknown_revision_is_one_line_error(repo_with_committed_run):
    result = run_gate("--against", "no-such-rev")
    assert result.exit_code == 1
    assert result.output == (
        "error: --against no-such-rev: dvc metrics diff failed: "
        "unknown Git revision 'no-such-rev'\n"
    )


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ({"metric": "a", "reference": 1, "tolerance": 0.1, "factor": 2},
         "checks[0]: expected exactly one of tolerance, factor, or min/max"),
        ({"metric": "a", "tolerance": 0.1}, "checks[0]: tolerance needs a reference value"),
        ({"metric": "a", "reference": 1, "factor": 0.5},
         "checks[0].factor: Input should be greater than 1"),
        ({"metric": "a", "max": 1, "toleranse": 1}, "checks[0].toleranse: Extra inputs"),
    ],
)
def test_bad_reference_file_is_one_line_error_naming_the_key(project, tmp_path, check, message):
    reference = write(tmp_path / "ref.json", {"checks": [check]})
    result = run_gate("--reference", str(reference))
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {reference}: {message}")
    assert result.output.count("\n") == 1


def test_missing_inputs_are_one_line_errors(project, tmp_path):
    assert run_gate().output == "error: gate: give --reference FILE, --against REV, or both\n"
    absent = tmp_path / "nothing.json"
    result = run_gate("--reference", str(absent))
    assert (result.exit_code, result.output) == (
        1, f"error: {absent}: not found; expected the gate's reference values\n"
    )


def test_check_kinds_and_bounds():
    reference = gate.parse_reference({"checks": [
        {"metric": "m.acc", "reference": 0.8, "tolerance": 0.02},
        {"metric": "m.loss", "reference": 0.5, "tolerance": 0.05, "better": "lower"},
        {"metric": "m.lr", "reference": 0.01, "factor": 2},
        {"metric": "m.ratio", "min": 0.1, "max": 0.2},
        {"metric": "m.nan", "max": 1},
    ]}, "ref.json")
    current = {
        "m.acc": 0.781, "m.loss": 0.56, "m.lr": 0.0049, "m.ratio": 0.2, "m.nan": float("nan")
    }
    assert [row.ok for row in gate.evaluate(reference, current)] == [
        True, False, False, True, False
    ]
    assert [row.ok for row in gate.evaluate(reference, {**current, "m.lr": 0.005})][2] is True
    baseline = {"m.acc": 0.70}
    assert gate.evaluate(reference, current, baseline)[0].reference == 0.70
    with pytest.raises(ClrpipeError, match="checks: List should have at least 1 item"):
        gate.parse_reference({"checks": []}, "ref.json")


def test_ci_reference_names_what_the_benchmark_writes_and_its_weights_are_identical(
    trained_project,
):
    """bench/benchmark.py's epoch part, once: its JSON has every `bench.*` key that
    ci/reference.json checks, and clrpipe's fast path ends on plain fit's exact weights."""
    sys.path.insert(0, str(REPO / "bench"))
    import benchmark

    results = benchmark.measure_epoch(trained_project, repeats=1, quick=True, log=lambda _: None)
    assert results["identical"] is True
    assert results["variants"]["plain"]["epoch_s"]["min"] > 0
    names = gate.numeric_leaves({"epoch": results}, f"{gate.BENCH_PREFIX}.")
    reference = gate.parse_reference(
        json.loads((REPO / "ci" / "reference.json").read_text()), "ci/reference.json"
    )
    wanted = {c.metric for c in reference.checks if c.metric.startswith("bench.")}
    assert wanted and wanted <= set(names)

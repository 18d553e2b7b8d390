"""The comparison: the summary core against hand calculations, and the `compare` stage on the
real split with a real embedded Ray and a real SQLite MLflow store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import cli
from clrpipe.pipeline.comparison.compare import (
    TrialOutcome,
    champion_candidate,
    fill_rates,
    first_reach,
    markdown_table,
    plan,
    score_interval,
    suggested_constant_lr,
    summarize,
    sweeps_needed,
    versus,
)
from clrpipe.pipeline.params import schedule_spec
from clrpipe.pipeline.tracking import registry, runs
from clrpipe.pipeline.training.trial import load_split
from clrpipe.stats import wilson_interval

BOUNDS = {"base_lr": 1e-3, "max_lr": 5e-2}
NETWORKS = ("constant_range_test", "clr_triangular")
SMALL = (
    "compare.seeds=2",
    "compare.epochs=2",
    f"compare.select=[{','.join(NETWORKS)},hgb]",
)


# --- pure core -----------------------------------------------------------------------------


def test_versus_pairs_by_seed_and_holm_adjusts_the_family():
    # a: +0.01 on every seed -> p = 2 / 10000 (no resample reaches 0); b: +0.01 on four seeds
    # and -0.01 on one -> p = 2 P(Binomial(5, 0.8) <= 2) = 0.1158 (see test_stats). Holm over
    # {a, b}: a 2 * 0.0002 = 0.0004 (win), b max(0.1158, 0.0004) = 0.1158 (tie); c diverged
    # on every seed: no difference, out of the family, a loss.
    ref = {s: 0.70 + 0.01 * s for s in range(5)}
    scores = {
        "hgb": ref,
        "a": {s: v + 0.01 for s, v in ref.items()},
        "b": {s: v + (0.01 if s else -0.01) for s, v in ref.items()},
        "c": {s: math.nan for s in ref},
    }
    found = versus(scores, "hgb")
    assert found["a"]["p_value"] == pytest.approx(2e-4)
    assert found["a"]["p_holm"] == pytest.approx(4e-4)
    assert found["b"]["p_value"] == pytest.approx(0.1158, abs=0.01)
    assert found["b"]["p_holm"] == found["b"]["p_value"]
    assert [found[n]["verdict"] for n in "abc"] == ["win", "tie", "loss"]
    assert found["c"]["mean"] is None and found["c"]["p_holm"] is None
    assert found["a"]["mean"] == pytest.approx(0.01)


def test_accuracy_interval_is_wilson_on_the_test_rows_and_r2_is_bootstrapped():
    # 0.9362 mean on 69 test rows: the t-interval over seeds once gave [82.86, 104.39]
    acc = score_interval([0.90, 0.97, 0.94, 0.92, 0.95], "accuracy", 69)
    expected = wilson_interval(0.936, 69)
    assert (acc.mean, acc.low, acc.high) == pytest.approx((0.936, expected.low, expected.high))
    assert 0 < acc.low < acc.high < 1
    r2 = score_interval([0.41, 0.45, 0.43], "r2", 89)
    assert 0.41 <= r2.low < r2.mean < r2.high <= 0.45


def test_first_reach_counts_epochs_and_cumulative_seconds():
    assert first_reach([0.70, 0.72, 0.735, 0.74], [1.0, 0.5, 0.25, 0.25], 0.73) == (3, 1.75)
    assert first_reach([0.70, 0.72], [1.0, 1.0], 0.73) == (None, None)


def outcome(method, seed, accuracy, val, seconds=1.0):
    return TrialOutcome(method, seed, accuracy, 0.55, 0.5, tuple(val), (seconds,) * len(val))


def test_summary_medians_count_seeds_that_missed_the_target_as_slowest():
    trials = [
        outcome("clr", 0, 0.73, [0.72, 0.731, 0.74]),
        outcome("clr", 1, 0.74, [0.731, 0.74, 0.75]),
        outcome("clr", 2, 0.72, [0.70, 0.71, 0.72]),
        outcome("flat", 0, 0.71, [0.70, 0.72, 0.731]),
        outcome("flat", 1, 0.70, [0.70, 0.70, 0.70]),
    ]
    summary = summarize(trials, target=0.73)
    clr, flat = summary["clr"], summary["flat"]
    assert clr.seeds == (0, 1, 2)
    assert clr.reached == 2
    assert clr.epochs_to_target == 2  # median of 2, 1, never
    assert clr.seconds_to_target == 2.0
    assert clr.test_score.mean == pytest.approx(0.73)
    assert flat.reached == 1
    assert flat.epochs_to_target is None  # median of 3 and never
    table = markdown_table(summary, 0.73)
    rows = [line for line in table.splitlines() if line.startswith("| clr") or
            line.startswith("| flat")]
    assert rows[0].startswith("| clr | 3 | 73.00 | [")
    assert "| 2 | 2.0 | 2/3 |" in rows[0]
    assert "| not reached | not reached | 1/2 |" in rows[1]
    with pytest.raises(ValueError, match="seed twice"):
        summarize([*trials, outcome("flat", 1, 0.7, [0.7])], target=0.73)


def test_champion_candidate_is_the_best_validating_methods_best_seed():
    # mean final validation: a 0.75, b 0.76 (so b, though a has the single best seed 0.80);
    # b's seeds tie at 0.76: the lower seed. Boosting (not a network) never is the candidate.
    trials = [outcome("a", 0, 0.7, [0.5, 0.70]), outcome("a", 1, 0.7, [0.5, 0.80]),
              outcome("b", 1, 0.7, [0.5, 0.76]), outcome("b", 0, 0.7, [0.5, 0.76]),
              TrialOutcome("hgb", 0, 0.9, 0.5, 0.5, (0.99,), (1.0,), epochs=False)]
    found = champion_candidate(trials)
    assert (found.method, found.seed) == ("b", 0)
    assert champion_candidate(trials[-1:]) is None


def test_modern_methods_are_available_off_by_default_and_take_their_own_sweep():
    from omegaconf import OmegaConf

    from clrpipe.pipeline import config
    from clrpipe.pipeline.params import CompareParams, parse

    raw = OmegaConf.to_container(config.compose().compare)
    default = parse(CompareParams, raw, "compare")
    assert list(plan(default, (1e-3, 5e-2))) == [  # today's committed methods only
        "constant_article", "constant_range_test", "clr_triangular", "clr_triangular2",
        "one_cycle"]
    assert sweeps_needed(default) == []
    chosen = parse(CompareParams, {**raw, "select": ["adam_default", "adam_range_test",
                                                      "schedule_free_adamw", "prodigy",
                                                      "muon_range_test"]}, "compare")
    assert sweeps_needed(chosen) == ["adam", "muon"]
    assert list(plan(chosen, None)) == ["adam_default", "schedule_free_adamw", "prodigy"]
    planned = plan(chosen, None, {"adam": (1e-4, 1e-2), "muon": (1e-3, 0.1)})
    assert {n: m.optimizer for n, m in planned.items()} == {
        "adam_default": "adam", "adam_range_test": "adam",
        "schedule_free_adamw": "schedule_free_adamw", "prodigy": "prodigy",
        "muon_range_test": "muon"}
    assert planned["adam_range_test"].schedule.learning_rate == pytest.approx(1e-3)  # sqrt
    assert planned["muon_range_test"].schedule.learning_rate == pytest.approx(0.01)
    assert planned["adam_default"].schedule.learning_rate == 1e-3
    without = {**raw, "range_test": {}}
    with pytest.raises(ClrpipeError, match=r"^compare\.range_test: expected a sweep for "
                       r"optimizer adam \(methods\.adam_range_test has a null rate\), got none$"):
        parse(CompareParams, without, "compare")


def test_null_rates_come_from_the_range_test():
    bounds = (0.004, 0.0625)
    assert suggested_constant_lr(bounds) == pytest.approx(math.sqrt(0.004 * 0.0625))
    assert suggested_constant_lr(bounds, "arithmetic_mean") == pytest.approx(0.03325)
    filled = fill_rates(
        schedule_spec({"policy": "triangular", "initial_learning_rate": None,
                       "maximal_learning_rate": 0.1, "step_size": 10}),
        bounds, "geometric_mean", "compare.methods.x.schedule",
    )
    assert (filled.initial_learning_rate, filled.maximal_learning_rate) == (0.004, 0.1)
    constant = schedule_spec({"policy": "constant", "learning_rate": None})
    assert fill_rates(constant, bounds, "geometric_mean", "w").learning_rate == pytest.approx(
        0.0158114, rel=1e-5)
    with pytest.raises(ClrpipeError, match=r"^compare\.m\.schedule\.learning_rate: null means"):
        fill_rates(constant, None, "geometric_mean", "compare.m.schedule")
    with pytest.raises(ClrpipeError, match=r"^w\.maximal_learning_rate: expected >= schedule"):
        fill_rates(schedule_spec({"policy": "triangular", "initial_learning_rate": None,
                                  "maximal_learning_rate": 1e-3, "step_size": 10}),
                   bounds, "geometric_mean", "w")


# --- the stage -----------------------------------------------------------------------------


def compare(*overrides: str):
    return CliRunner().invoke(cli.main, ["compare", *overrides])


@pytest.fixture
def bounded_project(trained_project: Path) -> Path:
    """The real split plus a range-test result with fixed bounds."""
    (trained_project / "metrics").mkdir()
    (trained_project / "metrics" / "range_test.json").write_text(json.dumps(BOUNDS))
    return trained_project


def store(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def compare_runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("clrpipe")
    return client.search_runs(
        [experiment.experiment_id], filter_string="tags.`clrpipe.stage` = 'compare'"
    )


def children(client: MlflowClient, parent):
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )


OUTPUTS = [
    Path("metrics/compare.json"),
    Path("reports/compare.md"),
    Path("plots/compare/trials.csv"),
    *(Path("plots/compare") / f"{name}.png" for name in ("test_accuracy", "val_accuracy", "lr")),
]


@pytest.mark.slow
def test_compare_stage_on_the_real_split(bounded_project):
    result = compare(*SMALL)
    assert result.exit_code == 0, result.output
    for path in OUTPUTS:
        assert path.is_file() and path.stat().st_size > 0, path
    methods = [*NETWORKS, "hgb"]

    report = json.loads(Path("metrics/compare.json").read_text())
    text = Path("reports/compare.md").read_text()
    table, against = text.split("Against gradient boosting")
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()
            if line.startswith("| ")}
    assert set(rows) == {"method", *methods}
    for name in methods:
        assert rows[name].split("|")[2].strip() == "2"
    # each network against boosting: paired by seed, Holm over the two networks
    assert list(report["versus_hgb"]) == list(NETWORKS)
    for name, row in report["versus_hgb"].items():
        mine = report["methods"][name]["test_accuracy_mean"]
        assert row["mean"] == pytest.approx(mine - report["methods"]["hgb"]["test_accuracy_mean"])
        assert row["p_value"] <= row["p_holm"] <= min(1.0, 2 * row["p_value"])
        assert row["verdict"] in {"win", "tie", "loss"}
        assert f"| {name} | {100 * row['mean']:+.2f} |" in against
    assert "Best network:" in text and "Holm" in text
    assert list(report["methods"]) == methods
    assert report["learning_rates"]["constant_range_test"]["learning_rate"] == pytest.approx(
        math.sqrt(BOUNDS["base_lr"] * BOUNDS["max_lr"])
    )
    trials = pd.read_csv("plots/compare/trials.csv")
    assert sorted(zip(trials.method, trials.seed, strict=True)) == sorted(
        (m, s) for m in methods for s in (0, 1)
    )
    for name in methods:
        summary = report["methods"][name]
        accuracy = trials[trials.method == name].test_accuracy
        assert summary["seeds"] == 2
        assert summary["test_accuracy_mean"] == pytest.approx(accuracy.mean())
        assert 0 < summary["test_accuracy_ci_low"] < summary["test_accuracy_mean"]
        assert summary["test_accuracy_mean"] < summary["test_accuracy_ci_high"] < 1
        assert summary["test_rows"] == len(load_split(Path("data/split"))[1])
        assert 0.6 < summary["test_accuracy_mean"] < 0.8

    # the champion's candidate: the network with the best mean final validation accuracy, its
    # best seed; saved, and registered as a serving model
    val = trials[trials.method != "hgb"].groupby("method").final_val_accuracy
    candidate = report["champion_candidate"]
    assert candidate["method"] == val.mean().idxmax()
    assert candidate["final_val_accuracy"] == pytest.approx(
        val.max()[candidate["method"]])
    assert candidate["optimizer"] == "sgd"
    assert Path("models/compare.keras").is_file()

    client = store(bounded_project)
    version = client.get_model_version(candidate["registered_model"],
                                       candidate["model_version"])
    assert version.tags[registry.STAGE_TAG] == "compare"
    assert version.run_id == compare_runs(client)[0].info.run_id
    (run,) = compare_runs(client)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["hgb.test_accuracy_mean"] == pytest.approx(
        report["methods"]["hgb"]["test_accuracy_mean"]
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "compare")}
    assert artifacts == {f"compare/{p.name}" for p in OUTPUTS}

    kids = children(client, run)
    assert sorted(
        (k.data.tags["clrpipe.method"], int(k.data.tags["clrpipe.seed"])) for k in kids
    ) == sorted((m, s) for m in methods for s in (0, 1))
    for kid in kids:
        assert kid.info.status == "FINISHED"
        name, seed = kid.data.tags["clrpipe.method"], int(kid.data.tags["clrpipe.seed"])
        logged = trials[(trials.method == name) & (trials.seed == seed)].test_accuracy.item()
        assert kid.data.metrics["test_accuracy"] == pytest.approx(logged)
        if name == "hgb":
            assert kid.data.params["hgb.max_iter"] == "100"
            continue
        history = client.get_metric_history(kid.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [0, 1]
        assert len(client.get_metric_history(kid.info.run_id, "learning_rate")) > 2
    clr = next(k for k in kids if k.data.tags["clrpipe.method"] == "clr_triangular")
    assert float(clr.data.params["schedule.initial_learning_rate"]) == BOUNDS["base_lr"]
    assert float(clr.data.params["schedule.maximal_learning_rate"]) == BOUNDS["max_lr"]


@pytest.mark.slow
def test_a_diverging_trial_fails_the_run_and_writes_nothing(bounded_project):
    result = compare(
        "compare.seeds=1", "compare.epochs=1", "compare.select=[constant_article]",
        "compare.methods.constant_article.schedule.learning_rate=1e30",
        "compare.methods.constant_article.batch_size=256",
    )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: compare: trial constant_article seed 0 failed: training diverged: loss is"
    )
    for path in [*OUTPUTS, Path("models/compare.keras")]:
        assert not path.exists(), path
    client = store(bounded_project)
    (run,) = compare_runs(client)
    assert run.info.status == "FAILED"
    assert run.data.tags[runs.ERROR_TAG].startswith("compare: trial constant_article")
    (kid,) = children(client, run)
    assert kid.info.status == "FAILED"
    assert kid.data.tags[runs.ERROR_TAG].startswith("training diverged")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["compare.select=[clr_triangular,nope]"],
         "params.yaml: compare.select: expected names from constant_article, "
         "constant_range_test, clr_triangular, clr_triangular2, one_cycle, adam_default, "
         "adam_range_test, schedule_free_adamw, prodigy, muon_range_test, hgb, got 'nope'"),
        (["+compare.methods.one_cycle.schedule.pct_start=2"],
         "params.yaml: compare.methods.one_cycle.schedule.pct_start: expected a number between "
         "0 and 1 (exclusive), got 2"),
        (["compare.methods.clr_triangular.batch_size=0"],
         "params.yaml: compare.methods.clr_triangular.batch_size: input should be greater than "
         "0, got 0"),
    ],
)
def test_bad_config_is_refused_before_any_training(bounded_project, overrides, message):
    result = compare(*overrides)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert not Path("mlflow.db").exists()
    for path in [*OUTPUTS, Path("models/compare.keras")]:
        assert not path.exists(), path


def test_null_rates_without_a_range_test_are_refused(trained_project):
    result = compare()
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: params.yaml: compare.methods.constant_range_test.schedule.learning_rate: null "
        "means 'from the range test', but metrics/range_test.json was not found (run `clrpipe "
        "range-test` first or set a number)"
    )


def test_the_target_is_the_datasets_or_the_reference_minus_a_margin():
    from clrpipe.pipeline.comparison.compare import target_score

    trials = [outcome("clr", 0, 0.73, [0.74]),
              TrialOutcome("hgb", 0, 0.74, 0.5, 0.5, (0.745,), (1.0,), epochs=False),
              TrialOutcome("hgb", 1, 0.74, 0.5, 0.5, (0.741,), (1.0,), epochs=False)]
    assert target_score(0.738, trials, 0.004) == 0.738
    assert target_score(None, trials, 0.004) == pytest.approx(0.739)
    with pytest.raises(ClrpipeError, match=r"data\.target_score: null needs the gradient"):
        target_score(None, trials[:1], 0.004)


def test_regression_summaries_are_named_after_r2():
    trials = [TrialOutcome("mlp", s, 0.5 + s / 10, 0.3, 0.2, (0.4, 0.6), (1.0, 1.0), metric="r2")
              for s in range(3)]
    summary = summarize(trials, target=0.55)["mlp"]
    found = summary.as_dict()
    assert found["test_r2_mean"] == pytest.approx(0.6) and "test_accuracy_mean" not in found
    assert (summary.epochs_to_target, summary.reached) == (2, 3)
    table = markdown_table({"mlp": summary}, 0.55)
    assert "test R² (mean)" in table and "| mlp | 3 | 0.6000 | [" in table

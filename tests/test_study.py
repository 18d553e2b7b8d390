"""The study: its summaries against hand calculations, its config errors, and the whole stage on
a tiny configuration (2 packaged tables, 2 seeds, 2 epochs, every method, 2 grid points per
optimizer family) with a
real embedded Ray and a real SQLite MLflow store."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from clrpipe.pipeline import cli, config
from clrpipe.pipeline.comparison.compare import TrialOutcome
from clrpipe.pipeline.params import StudyParams, parse
from clrpipe.pipeline.tracking.runs import ERROR_TAG
from clrpipe.study import core
from tests.conftest import REPO

TINY = (
    "study.datasets={penguins:{epochs:2,batch_size:16},diabetes:{epochs:2,batch_size:32}}",
    "study.dev=[diabetes]",
    "study.test=[penguins]",
    "study.seeds=2",
    "study.grid_seeds=2",
    *(f"study.range_test.{name}.{key}={value}" for name in ("sgd", "adam", "muon", "adamw_ema")
      for key, value in (("num_steps", 20), ("seeds", 1))),
    "study.grid.sgd.points=2",
    "study.grid.adam.points=2",
    "study.ray.num_cpus=2",
)
OUTPUTS = [Path("metrics/study.json"), Path("reports/study.md"),
           *(Path("plots/study") / f"{n}.png" for n in ("gap_to_oracle", "mean_rank",
                                                       "validation"))]


# --- pure core -----------------------------------------------------------------------------


def trial(method, seed, score, val, seconds=1.0):
    return TrialOutcome(method, seed, score, 0.5, 0.5, tuple(val), (seconds,) * len(val),
                        test_rows=200)


def jobs_of(*names, grid=(("grid_sgd_0.01", 0.01), ("grid_sgd_0.1", 0.1))):
    found = [core.Job("d", n, "sgd", "constant", (0, 1, 2, 3, 4), 3, 32, learning_rate=0.01)
             for n in names]
    found += [core.Job("d", n, "sgd", "constant", (0, 1, 2, 3, 4), 3, 32, learning_rate=lr,
                        family="sgd") for n, lr in grid]
    return found


def dataset_outcomes():
    method = [0.70, 0.72, 0.74, 0.71, 0.73]
    oracle = [0.72, 0.73, 0.74, 0.72, 0.74]
    worse = [0.60, 0.61, 0.62, 0.60, 0.61]
    return (
        [trial("clr", s, v, [0.70, 0.745, 0.75]) for s, v in enumerate(method)]
        + [trial("grid_sgd_0.1", s, v, [0.72, 0.74, 0.76]) for s, v in enumerate(oracle)]
        + [trial("grid_sgd_0.01", s, v, [0.60, 0.60, 0.61]) for s, v in enumerate(worse)]
    )


def test_dataset_summary_matches_a_hand_calculation():
    found = core.summarize_dataset(dataset_outcomes(), jobs_of("clr"),
                                    compute={"clr": 4.5}, tolerance=0.02)
    # the oracle: the grid point with the best mean final validation score (0.76 vs 0.61)
    assert found["oracle"] == "oracle_sgd"
    assert found["oracles"]["oracle_sgd"]["grid_point"] == "grid_sgd_0.1"
    # every grid point's per-seed final validation and test scores (the rules' regret reads them)
    assert found["oracles"]["oracle_sgd"]["points"]["grid_sgd_0.01"] == {
        "learning_rate": 0.01, "val": [0.61] * 5, "test": [0.60, 0.61, 0.62, 0.60, 0.61]}
    assert found["target_val"] == pytest.approx(0.74)
    clr = found["methods"]["clr"]
    # mean 0.72 on 200 test rows, Wilson with z = 1.959964 (z^2 = 3.841459):
    # centre (0.72 + z^2/400) / (1 + z^2/200) = 0.7296036 / 1.0192073 = 0.715854,
    # half z sqrt(0.72 * 0.28 / 200 + z^2 / 160000) / 1.0192073 = 0.061777
    assert clr["test_accuracy_mean"] == pytest.approx(0.72)
    assert clr["test_rows"] == 200
    assert (clr["test_accuracy_ci_low"], clr["test_accuracy_ci_high"]) == pytest.approx(
        (0.654077, 0.777631), abs=2e-6)
    # paired differences -0.02, -0.01, 0, -0.01, -0.01: mean -0.01; a resample's mean reaches 0
    # only if all five draws are the 0: P* = 0.2^5 = 0.00032, so p = 2 * 0.00032 (bootstrap
    # noise aside); Holm over a family of one leaves it; below 0.05 with a negative mean: loss
    assert clr["gap_to_oracle"] == pytest.approx(-0.01)
    assert clr["paired_mean"] == pytest.approx(-0.01)
    assert -0.02 <= clr["paired_ci_low"] < -0.01 < clr["paired_ci_high"] <= 0.0
    assert clr["paired_p"] == pytest.approx(2 * 0.2 ** 5, abs=5e-4)
    assert clr["paired_p_holm"] == clr["paired_p"]
    assert clr["verdict"] == "loss"
    # validation within 0.02 of the oracle's 0.76 first at epoch 2 (0.745 >= 0.74), 2 s
    assert (clr["epochs_to_oracle"], clr["seconds_to_oracle"], clr["reached_oracle"]) == (
        2, 2.0, 5)
    assert clr["compute_epochs"] == 4.5
    assert found["methods"]["oracle_sgd"]["compute_epochs"] == 6.0  # 2 grid points x 3 epochs
    assert found["methods"]["oracle_sgd"]["verdict"] == "oracle"
    assert [found["methods"][n]["rank"] for n in ("oracle_sgd", "clr")] == [1, 2]


def test_across_datasets_mean_rank_and_win_tie_loss():
    a = core.summarize_dataset(dataset_outcomes(), jobs_of("clr"), compute={},
                                tolerance=0.01)
    better = [trial(o.method, o.seed, o.test_score + (0.05 if o.method == "clr" else 0),
                    o.val_score) for o in dataset_outcomes()]
    b = core.summarize_dataset(better, jobs_of("clr"), compute={}, tolerance=0.01)
    found = core.report({"a": a, "b": b}, {}, seeds=5, grid_seeds=5, confidence=0.95,
                         seconds=1.0)
    assert found["datasets"] == ["a", "b"]
    clr = found["across_datasets"]["clr"]
    assert (clr["wins"], clr["ties"], clr["losses"]) == (1, 0, 1)
    assert clr["mean_rank"] == 1.5  # second on a, first on b (0.77 vs 0.73)
    text = core.markdown(found)
    assert "| clr | 1.50 | 1 / 0 / 1 |" in text and "## a" in text and "## b" in text


def test_finder_suggestions_come_from_the_range_tests_own_curves():
    from tests.test_finders import STEP_LOSSES, STEP_LRS, VALLEY_LOSSES, VALLEY_LRS

    rt = {"optimizer": "sgd", "base_lr": 1e-3, "max_lr": 0.1, "steps": [20, 60],
          "curves": [(VALLEY_LRS.tolist(), VALLEY_LOSSES.tolist()),
                     (STEP_LRS.tolist(), STEP_LOSSES.tolist())]}
    row = core.finder_row(rt)
    assert "curves" not in row and row["steps"] == [20, 60]
    found = row["finders"]
    assert found["clrpipe_constant"] == pytest.approx(0.01)  # sqrt(1e-3 * 0.1)
    assert found["clrpipe_clr_pair"] == [1e-3, 0.1]
    # torch-lr-finder needs 17 batches: both curves give one, the median is their mean
    from clrpipe.study import finders
    both = [finders.torch_lr_finder_steepest(*c) for c in rt["curves"]]
    assert found["torch_lr_finder_steepest"] == pytest.approx(sum(both) / 2)
    a = core.summarize_dataset(dataset_outcomes(), jobs_of("clr"), compute={}, tolerance=0.01)
    text = core.markdown(core.report({"d": a}, {"d": {"range_tests": {"sgd": row}}}, seeds=5,
                                     grid_seeds=5, confidence=0.95, seconds=1.0))
    line = next(x for x in text.splitlines() if x.startswith("| sgd |"))
    assert line.startswith("| sgd | 0.1 | 0.01 | 0.001 / 0.1 | ")  # oracle grid_sgd_0.1


def test_plan_has_every_method_and_grid_point_per_dataset():
    s = parse(StudyParams, dict(config.compose().study), "study")
    jobs = core.plan(s)
    assert len(jobs) == len(s.datasets) * (len(s.methods) + 16)
    grid = [j.learning_rate for j in jobs if j.family == "sgd" and j.dataset == "cardio"]
    assert grid[0] == pytest.approx(1e-3) and grid[-1] == pytest.approx(1.0)
    assert all(b / a == pytest.approx(10 ** (3 / 7)) for a, b in itertools.pairwise(grid))
    assert all(len(j.seeds) == 5 for j in jobs)


@pytest.mark.parametrize(("override", "message"), [
    ("study.grid.sgd.points=1", "study.grid.sgd.points: expected >= 2"),
    ("+study.methods.sgd_clr.learning_rate=0.1",
     "study.methods.sgd_clr.learning_rate: expected null for schedule triangular"),
    ("+study.methods.x={optimizer:lion,learning_rate:0.1}", "study.methods.x.optimizer"),
    ("study.test=[breast_cancer,penguins,digits]",
     "study.test: expected every table in exactly one of study.dev and study.test, got digits "
     "in both"),
    ("study.test=[breast_cancer]",
     "study.dev: expected every table of study.datasets in study.dev or study.test, got "
     "penguins in neither"),
    ("study.dev=[cardio,diabetes,digits,wine]",
     "study.dev: expected tables of study.datasets (cardio, breast_cancer, diabetes, digits, "
     "penguins), got wine"),
    ("study.dev=[cardio,cardio,diabetes,digits]",
     "study.dev: expected each table once, got cardio twice"),
    ("study.dev=[]", "study.dev: expected at least one development table"),
    ("study.dev=[hotels]", "study.dev.0: expected one of 'cardio'"),
])
def test_bad_study_config_is_one_line_naming_the_key(project, override, message):
    result = CliRunner().invoke(cli.main, ["study", override])
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not any(path.exists() for path in OUTPUTS)


# --- the stage -----------------------------------------------------------------------------


def tiny_params() -> StudyParams:
    """`study:` as the tiny run reads it (the CLI's overrides replace a mapping; Hydra's
    compose would merge `study.datasets` into the five tables)."""
    cfg = config.load(TINY, params_file=REPO / "params.yaml", conf_dir=REPO / "conf")
    return parse(StudyParams, OmegaConf.to_container(cfg.study, resolve=True), "study")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    shutil.copytree(REPO / "conf", root / "conf")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    before = os.getcwd()
    os.chdir(root)
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        result = CliRunner().invoke(cli.main, ["study", *TINY])
    finally:
        os.chdir(before)
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert result.exit_code == 0, result.output
    return root


def test_every_method_and_dataset_is_in_the_report_with_its_seeds(tiny_study):
    found = json.loads((tiny_study / "metrics/study.json").read_text())
    s = tiny_params()
    assert found["datasets"] == ["penguins", "diabetes"]
    assert set(found["dataset_details"]) == {"penguins", "diabetes"}
    for dataset in found["datasets"]:
        rows = found["results"][dataset]["methods"]
        assert list(rows) == [*s.methods, "oracle_sgd", "oracle_adam"]
        assert all(row["seeds"] == 2 for row in rows.values())
        assert found["results"][dataset]["oracle"] in ("oracle_sgd", "oracle_adam")
        tests = found["dataset_details"][dataset]["range_tests"]
        assert set(tests) == {"sgd", "adam", "muon", "adamw_ema"}
        for rt in tests.values():  # every finder on the same sweeps; the curves left out
            assert "curves" not in rt and set(rt["finders"]) == set(core.FINDERS)
            assert rt["finders"]["clrpipe_clr_pair"] == [rt["base_lr"], rt["max_lr"]]
    assert found["results"]["diabetes"]["metric"] == "r2"
    assert found["results"]["penguins"]["metric"] == "accuracy"
    for name, row in found["results"]["penguins"]["methods"].items():  # Wilson: inside [0, 1]
        if row["test_accuracy_ci_low"] is not None:
            assert 0 <= row["test_accuracy_ci_low"] <= row["test_accuracy_mean"]
            assert row["test_accuracy_mean"] <= row["test_accuracy_ci_high"] <= 1
        assert row["test_rows"] > 0
        if row["verdict"] != "oracle" and row["paired_p"] is not None:
            assert row["paired_p"] <= row["paired_p_holm"] <= 1, name
    rule = found["lr_rule"]  # chosen on diabetes alone, reported on penguins
    assert (rule["dev"], rule["test"]) == (["diabetes"], ["penguins"])
    assert rule["chosen"] in rule["candidates"] and "base_lr" in rule["candidates"]
    assert rule["dev_regret"][rule["chosen"]]["mean"] == min(
        r["mean"] for r in rule["dev_regret"].values())
    for table in ("diabetes", "penguins"):
        assert set(rule["per_table"][table]) == {"sgd", "adam"}
        for family, cells in rule["per_table"][table].items():
            rt = found["dataset_details"][table]["range_tests"][family]
            assert cells["geometric_mean"]["lr"] == pytest.approx(
                (rt["base_lr"] * rt["max_lr"]) ** 0.5)
            assert cells["max_lr"]["lr"] == rt["max_lr"]
            assert set(rt["suggestions"]) >= {"valley", "minimum", "steepest"}
            points = found["results"][table]["oracles"][f"oracle_{family}"]["points"]
            assert cells["base_lr"]["grid_lr"] in [p["learning_rate"] for p in points.values()]
    report = (tiny_study / "reports/study.md").read_text()
    assert "## The constant rate: `RangeTestResult.lr`" in report
    assert f"| {rule['chosen']} (chosen) |" in report
    report = (tiny_study / "reports/study.md").read_text()
    assert report.count("Finder suggestions on the same sweeps") == 2
    assert all(f"| {name} |" in report for name in [*s.methods, "oracle_sgd", "oracle_adam"])
    for path in OUTPUTS:
        assert (tiny_study / path).stat().st_size > 0


def test_one_mlflow_child_run_per_trial_and_the_outputs_as_artifacts(tiny_study):
    client = MlflowClient(f"sqlite:///{tiny_study / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("clrpipe")
    (run,) = client.search_runs([experiment.experiment_id],
                                filter_string="tags.`clrpipe.stage` = 'study'")
    assert run.info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'", max_results=1000)
    trials = sorted(c.data.tags["clrpipe.trial"] for c in children)
    s = tiny_params()
    expected = sorted(f"{d}/{j.method}/{seed}" for d in ("penguins", "diabetes")
                      for j in core.plan(s) if j.dataset == d for seed in j.seeds)
    assert trials == expected and len(trials) == 2 * (11 + 4) * 2
    finished = [c for c in children if c.info.status == "FINISHED"]
    for child in children:  # a diverged training is a FAILED trial saying so, nothing else
        assert child.info.status == "FINISHED" or (
            child.info.status == "FAILED" and "diverged" in child.data.tags[ERROR_TAG])
    one = next(c for c in finished if c.data.tags["clrpipe.trial"] == "diabetes/sgd_clr/0")
    assert {"test_r2", "val_r2", "learning_rate"} <= set(one.data.metrics)
    assert one.data.params["optimizer"] == "sgd" and "max_lr" in one.data.params
    names = {a.path for a in client.list_artifacts(run.info.run_id, "study")}
    assert {"study/study.json", "study/study.md", "study/gap_to_oracle.png"} <= names


def test_figures_draw_zero_width_and_diverged_rows():
    from clrpipe import plots
    a = core.summarize_dataset(dataset_outcomes(), jobs_of("clr", "same", "lost"),
                                compute={}, tolerance=0.01)
    a["methods"]["same"] = dict(a["methods"]["clr"], paired_mean=-0.01 + 1e-17,
                                paired_ci_low=-0.01, paired_ci_high=-0.01)
    a["methods"]["lost"] = dict(a["methods"]["clr"], paired_mean=None, paired_ci_low=None,
                                paired_ci_high=None, gap_to_oracle=None)
    found = core.report({"a": a}, {}, seeds=5, grid_seeds=5, confidence=0.95, seconds=1.0)
    figures = plots.study_figures(found, {"a": {"clr": [0.7, 0.75], "oracle_sgd": [0.7, 0.76]}})
    assert set(figures) == {"gap_to_oracle", "mean_rank", "validation"}
    assert all(plots.png_bytes(f).startswith(b"\x89PNG") for f in figures.values())


def test_a_failing_training_fails_the_study_with_one_line_and_no_outputs(project):
    result = CliRunner().invoke(cli.main, [
        "study", "study.datasets={breast_cancer:{epochs:1,batch_size:64}}",
        "study.dev=[breast_cancer]", "study.test=[]", "study.seeds=2",
        "study.grid_seeds=2", "study.grid={sgd:{low:0.01,high:0.1,points:2}}",
        "study.methods={bad:{optimizer:sgd,learning_rate:0.1,options:{no_such_option:1}}}",
        "study.ray.num_cpus=2",
    ])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: study: breast_cancer bad failed:") and "no_such_option" in line
    assert not any(path.exists() for path in OUTPUTS)
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("clrpipe")
    (run,) = client.search_runs([experiment.experiment_id],
                                filter_string="tags.`clrpipe.stage` = 'study'")
    assert run.info.status == "FAILED"
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert {c.data.tags["clrpipe.trial"] for c in children} >= {
        "breast_cancer/bad/0", "breast_cancer/bad/1"}
    assert {c.info.status for c in children} == {"FAILED"}

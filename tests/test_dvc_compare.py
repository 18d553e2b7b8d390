"""`compare` with the modern optimizers in a real DVC run (a temporary git repo, the breast
cancer table): Adam at its own range test's rate and schedule-free AdamW next to gradient
boosting, their rows in `metrics/compare.json` and their MLflow child runs, and `champion`
picking the comparison's network when it has the best validation score (both trainings are
held at their initial weights here, so it must)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_breast_cancer

from clrpipe.pipeline.tracking import registry
from tests.test_dvc_pipeline import BIN, Pipeline, all_runs, build_repo, ran, runs_by_tag

MODERN = ("adam_range_test", "schedule_free_adamw")
SETTINGS = [
    "data=table", "data.raw=data/raw/breast_cancer.csv", "data.target=target",
    "range_test.num_steps=60", "range_test.seeds=1", "range_test.validation_rows=60",
    "train.clr.batch_size=32",
    # the trainings barely move from their initial weights: the comparison's network wins
    "train.baseline.epochs=1", "train.baseline.learning_rate=1e-7",
    "train.clr.epochs=1", "schedule.initial_learning_rate=1e-7",
    "schedule.maximal_learning_rate=2e-7",
    "compare.seeds=2", "compare.epochs=12", f"compare.select=[{','.join(MODERN)},hgb]",
    "compare.range_test.adam.num_steps=60", "compare.range_test.adam.seeds=1",
    *(f"compare.methods.{name}.batch_size=32" for name in MODERN),
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Pipeline:
    root = tmp_path_factory.mktemp("compare_repo")
    pipeline = build_repo(root, tmp_path_factory.mktemp("dvc_site"))
    (root / "data" / "raw").mkdir(parents=True)
    load_breast_cancer(as_frame=True).frame.to_csv(root / "data/raw/breast_cancer.csv",
                                                   index=False)
    pipeline.run("git", "add", "-A")
    pipeline.run("git", "commit", "-q", "-m", "clrpipe project")
    pipeline.run(BIN / "clrpipe", "params", *SETTINGS)
    done = pipeline.dvc("repro", "champion")
    assert {"compare", "champion"} <= ran(done.stdout + done.stderr)
    return pipeline


@pytest.mark.slow
def test_compare_runs_the_modern_methods_with_their_own_range_test(repo):
    report = repo.read_json("metrics/compare.json")
    assert list(report["methods"]) == [*MODERN, "hgb"]
    assert report["optimizers"] == {"adam_range_test": "adam",
                                    "schedule_free_adamw": "schedule_free_adamw"}
    sweep = report["range_tests"]["adam"]
    assert 0 < sweep["base_lr"] < sweep["max_lr"]
    assert len(sweep["steps"]) == 1 and 0 < sweep["steps"][0] <= 60  # one seed; may stop early
    # the constant rate is the range test's rule (geometric mean of the pair) on Adam's sweep
    assert report["learning_rates"]["adam_range_test"]["learning_rate"] == pytest.approx(
        math.sqrt(sweep["base_lr"] * sweep["max_lr"]))
    assert report["learning_rates"]["schedule_free_adamw"]["learning_rate"] == 0.0025
    trials = pd.read_csv(repo.root / "plots/compare/trials.csv")
    for name in MODERN:
        row = report["methods"][name]
        mine = trials[trials.method == name]
        assert row["seeds"] == 2 and sorted(mine.seed) == [0, 1]
        assert row["test_accuracy_mean"] == pytest.approx(mine.test_accuracy.mean())
        assert row["test_accuracy_mean"] > 0.85  # a trained network on an easy table
        assert 0 < row["test_accuracy_ci_low"] < row["test_accuracy_ci_high"] <= 1
        assert report["versus_hgb"][name]["verdict"] in {"win", "tie", "loss"}

    client = MlflowClient(f"sqlite:///{repo.root / 'mlflow.db'}")
    (stage_run,) = runs_by_tag(client, "clrpipe.stage", "compare")
    assert stage_run.info.status == "FINISHED"
    kids = [r for r in all_runs(client)
            if r.data.tags.get("mlflow.parentRunId") == stage_run.info.run_id]
    for name in MODERN:
        mine = [k for k in kids if k.data.tags["clrpipe.method"] == name]
        assert len(mine) == 2 and {k.info.status for k in mine} == {"FINISHED"}
        for kid in mine:
            assert kid.data.params["optimizer"] == report["optimizers"][name]
            seed = int(kid.data.tags["clrpipe.seed"])
            logged = trials[(trials.method == name) & (trials.seed == seed)].test_accuracy
            assert kid.data.metrics["test_accuracy"] == pytest.approx(logged.item())


@pytest.mark.slow
def test_champion_picks_the_comparisons_network_when_it_validates_best(repo):
    champion = repo.read_json("metrics/champion.json")
    candidate = repo.read_json("metrics/compare.json")["champion_candidate"]
    scores = champion["candidates"]
    assert set(scores) == {"train_baseline", "train_clr", "compare"}
    # the rule: the highest final validation score
    assert champion["stage"] == max(scores, key=scores.get) == "compare"
    assert champion["method"] == candidate["method"] in MODERN
    assert champion["optimizer"] == candidate["optimizer"] != "sgd"
    assert champion["value"] == candidate["final_val_accuracy"] == scores["compare"]
    assert champion["promoted"] is True
    client = MlflowClient(f"sqlite:///{repo.root / 'mlflow.db'}")
    version = client.get_model_version_by_alias(candidate["registered_model"], "champion")
    assert str(version.version) == candidate["model_version"] == champion["model_version"]
    assert version.tags[registry.STAGE_TAG] == "compare"

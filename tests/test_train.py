"""The `train` stage on the real split: outputs, MLflow contents, determinism, failure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from clrpipe import keras_private, schedules
from clrpipe.pipeline import cli, config
from clrpipe.pipeline.data import cardio
from clrpipe.pipeline.tracking import runs

EPOCHS = 2
MARGIN = 0.15  # accuracy points above the majority class on the test split
PINNED = ("schedule.initial_learning_rate=0.1", "schedule.maximal_learning_rate=0.5")  # near the
# range test's 0.143..0.573 on this table


def train(variant: str, *overrides: str):
    return CliRunner().invoke(
        cli.main, ["train", variant, f"train.{variant}.epochs={EPOCHS}", *overrides]
    )


def store(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def stage_runs(client: MlflowClient, stage: str):
    experiment = client.get_experiment_by_name("clrpipe")
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`clrpipe.stage` = '{stage}'"
    )


@pytest.fixture
def clr_run(trained_project):
    result = train("clr", *PINNED)
    assert result.exit_code == 0, result.output
    return trained_project


def test_clr_stage_writes_outputs(clr_run):
    metrics = json.loads(Path("metrics/train_clr.json").read_text())
    assert metrics["epochs"] == EPOCHS
    history = pd.read_csv("plots/train_clr/history.csv")
    assert list(history.epoch) == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(history.columns)
    lr = pd.read_csv("plots/train_clr/lr.csv")
    assert lr.lr.between(0.1, 0.5).all()
    model = keras.models.load_model("models/train_clr.keras")
    schedule = keras_private.learning_rate_schedule(model.optimizer)
    assert isinstance(schedule, schedules.CyclicalLearningRate)
    test = pd.read_parquet("data/split/test.parquet")
    y_test = test[cardio.TARGET].to_numpy("float32")
    _, accuracy = model.evaluate(test[list(cardio.FEATURES)].to_numpy("float32"), y_test,
                                 verbose=0)
    assert metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    # Held-out rows, a table about half positive: two epochs at 0.1..0.5 with dropout must
    # beat always answering the majority class by a clear margin (a broken model cannot).
    majority = max(y_test.mean(), 1 - y_test.mean())
    assert accuracy > majority + MARGIN, (accuracy, majority)


def test_a_successful_stage_prints_no_mlflow_info_lines(trained_project):
    """A real `clrpipe train clr` process that logs its models: MLflow's INFO lines (uv lock
    export and copies) are not printed; the run is FINISHED."""
    for name in ("uv.lock", "pyproject.toml"):  # MLflow's uv support speaks in a uv project
        shutil.copy(Path(__file__).parents[1] / name, trained_project / name)
    exe = Path(sys.executable).with_name("clrpipe")
    done = subprocess.run([str(exe), "train", "clr", "train.clr.epochs=1", *PINNED],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "INFO mlflow" not in done.stderr, done.stderr
    (run,) = stage_runs(store(trained_project), "train_clr")
    assert run.info.status == "FINISHED"


def test_clr_run_is_tracked_completely(clr_run):
    client = store(clr_run)
    (run,) = stage_runs(client, "train_clr")
    assert run.info.status == "FINISHED"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags[runs.PIPELINE_TAG]
    assert run.data.tags["mlflow.runName"] == "train_clr"
    assert run.data.tags["mlflow.source.git.commit"]

    cfg = config.load(list(PINNED))
    expected = {k: str(v) for k, v in config.flatten(
        config.OmegaConf.to_container(cfg, resolve=True)).items()}
    expected["train.clr.epochs"] = str(EPOCHS)
    assert run.data.params == expected

    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1]
    assert run.data.metrics["test_accuracy"] == pytest.approx(
        json.loads(Path("metrics/train_clr.json").read_text())["test_accuracy"]
    )

    lr_history = client.get_metric_history(run.info.run_id, "learning_rate")
    schedule = schedules.build_schedule(
        config.OmegaConf.to_container(cfg.schedule), train_rows=50333, batch_size=350
    )
    assert len(lr_history) > 2
    for point in lr_history:
        assert point.value == pytest.approx(float(schedule(point.step)), rel=1e-6)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/curves.png", "plots/lr.png"}
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"cardio_training", "cardio_testing"}
    for name, frame in (("training", "train"), ("testing", "test")):
        full = mlflow.data.from_pandas(pd.read_parquet(f"data/split/{frame}.parquet"))
        assert inputs[f"cardio_{name}"].schema == full.to_dict()["schema"]  # all rows inferred
        assert inputs[f"cardio_{name}"].digest == full.digest

    mlflow.set_tracking_uri(f"sqlite:///{clr_run / 'mlflow.db'}")
    found = {m.name: m for m in mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list")}
    assert set(found) == {"model", "serving"}  # the Keras network; the raw-row pyfunc
    logged = found["model"]
    assert {m.source_run_id for m in found.values()} == {run.info.run_id}
    metrics = json.loads(Path("metrics/train_clr.json").read_text())
    assert metrics["serving_model_uri"] == f"models:/{found['serving'].model_id}"
    assert (metrics["registered_model"], metrics["model_version"]) == ("clrpipe-cardio", "1")
    loaded = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    assert loaded.metadata.signature is not None
    test = pd.read_parquet("data/split/test.parquet")
    x = test[list(cardio.FEATURES)].to_numpy("float32")[:256]
    in_memory = keras.models.load_model("models/train_clr.keras").predict(x, verbose=0)
    np.testing.assert_allclose(np.asarray(loaded.predict(x)).ravel(), in_memory.ravel(), rtol=1e-6)
    requirements = Path(mlflow.artifacts.download_artifacts(
        f"{logged.artifact_location}/requirements.txt")).read_text().split()
    assert requirements == [f"{name}=={version(name)}" for name in runs.MODEL_PACKAGES]
    assert "tensorflow" in runs.MODEL_PACKAGES  # Keras's backend, which inference missed


def test_same_seed_gives_same_metrics(trained_project):
    results = []
    for folder in ("a", "b"):
        assert train("baseline", "tracking.enabled=false", "train.baseline.batch_size=256")\
            .exit_code == 0
        Path("metrics/train_baseline.json").rename(f"{folder}.json")
        results.append(json.loads(Path(f"{folder}.json").read_text()))
    for key in ("test_accuracy", "test_loss", "train_accuracy", "final_val_accuracy"):
        assert results[0][key] == results[1][key]


def test_nan_loss_fails_the_run_and_leaves_nothing(trained_project):
    result = train("baseline", "train.baseline.learning_rate=1e30")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: training diverged: loss is nan at step 64;"
    )
    (run,) = stage_runs(store(trained_project), "train_baseline")
    assert run.info.status == "FAILED"
    assert run.data.tags[runs.ERROR_TAG].startswith("training diverged: loss is nan")
    parent = store(trained_project).get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"
    mlflow.set_tracking_uri(f"sqlite:///{trained_project / 'mlflow.db'}")
    assert mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    ) == []
    for leftover in ("models", "metrics", "plots"):
        assert not Path(leftover).exists()


def test_clr_without_bounds_or_range_test_is_refused(trained_project):
    result = train("clr")
    assert result.exit_code == 1
    assert "schedule.initial_learning_rate" in result.stderr.strip().splitlines()[-1]
    assert not Path("models").exists()


def test_unknown_activation_is_refused_naming_the_key(trained_project):
    result = train("baseline", "model.activation=relux")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: params.yaml: model.activation: expected a Keras activation name, got 'relux'"
    )


def test_reshuffle_with_the_tfa_backend_is_refused_naming_the_key(trained_project):
    result = train("clr", *PINNED, "schedule.backend=tfa", "train.reshuffle=true")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: train.reshuffle: true is not supported with schedule.backend: tfa"
    )
    assert not Path("models").exists()
    assert not Path("mlflow.db").exists()  # refused before any run was opened


@pytest.mark.parametrize(
    ("override", "expected"),
    [("model.dropout=1", "model.dropout: input should be less than 1, got 1"),
     ("model.l2=-0.1", "model.l2: input should be greater than or equal to 0, got -0.1")],
)
def test_bad_regularization_is_refused_naming_the_key(trained_project, override, expected):
    result = train("baseline", override)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: params.yaml: {expected}"
    assert not Path("models").exists()


@pytest.mark.parametrize("content", ['{"base_lr": 0.1, "max', '{"max_lr": 0.5}', "[]"])
def test_a_broken_range_test_result_is_one_line_asking_to_rerun_it(trained_project, content):
    Path("metrics").mkdir()
    Path("metrics/range_test.json").write_text(content)
    result = train("clr")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: metrics/range_test.json: not a range-test result (")
    assert line.endswith("rerun `clrpipe range-test`")
    assert not Path("models").exists() and not Path("mlflow.db").exists()

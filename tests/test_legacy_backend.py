"""`schedule=tfa_triangular`: the CLR stage trained by tfa 0.23 itself in legacy/.venv."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from clrpipe import keras_private
from clrpipe.pipeline import cli
from clrpipe.pipeline.data import cardio
from clrpipe.schedules import CyclicalLearningRate

pytestmark = [pytest.mark.legacy, pytest.mark.slow]

EPOCHS = 2
TFA = ("schedule=tfa_triangular", f"train.clr.epochs={EPOCHS}")


def clr(*overrides: str):
    return CliRunner().invoke(cli.main, ["train", "clr", *overrides])


def test_tfa_backend_trains_through_the_stage(trained_project):
    result = clr(*TFA)
    assert result.exit_code == 0, result.output
    metrics = json.loads(Path("metrics/train_clr.json").read_text())
    assert metrics["backend"] == "tfa"
    assert metrics["tensorflow"].startswith("2.15.")
    assert metrics["epochs"] == EPOCHS
    assert 0.6 < metrics["test_accuracy"] <= 1

    # The saved Keras 3 model holds tfa's trained weights: it scores what tfa scored.
    test = pd.read_parquet("data/split/test.parquet")
    model = keras.models.load_model("models/train_clr.keras")
    _, accuracy = model.evaluate(
        test[list(cardio.FEATURES)].to_numpy("float32"), test[cardio.TARGET].to_numpy("float32"),
        batch_size=4096, verbose=0,
    )
    assert accuracy == pytest.approx(metrics["tfa_test_accuracy"], abs=1e-4)
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9)

    # The learning rate of every step is tfa's, and equals clrpipe's schedule.
    lr = pd.read_csv("plots/train_clr/lr.csv")
    train_rows = len(pd.read_parquet("data/split/train.parquet"))
    fit_rows = train_rows - math.ceil(0.1 * train_rows)  # sklearn's validation_fraction split
    per_epoch = math.ceil(fit_rows / 350)
    assert len(lr) == EPOCHS * per_epoch
    ours = CyclicalLearningRate(1e-4, 1e-2, 2 * per_epoch)(lr.step.to_numpy())
    np.testing.assert_allclose(lr.lr, np.asarray(ours), rtol=1e-6)
    assert list(pd.read_csv("plots/train_clr/history.csv").epoch) == [1, 2]
    # Resuming the saved model continues tfa's cycle where it stopped.
    assert int(model.optimizer.iterations) == len(lr)
    assert isinstance(keras_private.learning_rate_schedule(model.optimizer), CyclicalLearningRate)

    client = MlflowClient(f"sqlite:///{trained_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("clrpipe")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`clrpipe.stage` = 'train_clr'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["clrpipe.backend"] == "tfa"
    assert run.data.params["schedule.backend"] == "tfa"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == EPOCHS


def test_missing_legacy_environment_fails_before_training(trained_project, monkeypatch):
    monkeypatch.setenv("CLRPIPE_LEGACY_DIR", str(trained_project / "nowhere"))
    result = clr(*TFA)
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: schedule.backend: tfa needs the legacy environment")
    assert "uv sync --frozen --project legacy" in last
    assert not Path("metrics/train_clr.json").exists()
    assert not Path("models/train_clr.keras").exists()
    assert not (trained_project / "mlflow.db").exists()

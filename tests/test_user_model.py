"""Your own model: `model._target_` names a builder; the range test, both trainings, `compare`,
tracking and model logging work unchanged with it (real training on the real split)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from clrpipe.pipeline import cli
from tests.conftest import REPO

USER_MODEL = {"_target_": "tests.user_model.build", "width": 12, "depth": 3}


def use_model(project: Path, model: dict) -> None:
    cfg = OmegaConf.load(project / "params.yaml")
    cfg.model = model
    OmegaConf.save(cfg, project / "params.yaml")


def clrpipe(*args: str):
    return CliRunner().invoke(cli.main, list(args))


@pytest.mark.slow
def test_a_user_model_runs_through_every_training_stage(trained_project, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # Ray's workers import the builder too
    use_model(trained_project, USER_MODEL)
    small = ["range_test.num_steps=60", "range_test.seeds=1"]
    for args in (["range-test", *small], ["train", "baseline", "train.baseline.epochs=1"],
                 ["train", "clr", "train.clr.epochs=2"],
                 ["compare", "compare.seeds=1", "compare.epochs=1",
                  "compare.select=[clr_triangular,hgb]"]):
        result = clrpipe(*args)
        assert result.exit_code == 0, (args, result.output)
    saved = keras.saving.load_model(trained_project / "models" / "train_clr.keras")
    assert saved.name == "user_residual_mlp"
    assert len([layer for layer in saved.layers if isinstance(layer, keras.layers.Add)]) == 2
    found = json.loads((trained_project / "metrics" / "train_clr.json").read_text())
    assert 0.6 < found["test_accuracy"] < 0.8
    client = MlflowClient(f"sqlite:///{trained_project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("clrpipe").experiment_id],
                              filter_string="tags.`clrpipe.stage` = 'train_clr'")
    (run,) = runs
    assert run.data.params["model._target_"] == "tests.user_model.build"
    assert run.data.params["model.depth"] == "3"
    assert run.data.metrics["test_accuracy"] == pytest.approx(found["test_accuracy"])
    compared = json.loads((trained_project / "metrics" / "compare.json").read_text())
    assert set(compared["methods"]) == {"clr_triangular", "hgb"}


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"_target_": "tests.user_model.nothing"}, "model._target_: tests.user_model.nothing: "
                                                    "cannot import it"),
        ({"_target_": "tests.user_model.not_a_model"}, "expected a keras.Model, got str"),
        ({"_target_": "tests.user_model.build", "widht": 3}, "unexpected keyword argument"),
        ({"_target_": "no_dots"}, "model._target_: expected a dotted path"),
        ({"units": [8], "activaton": "relu"}, "model.activaton: unknown key for the built-in"),
    ],
)
def test_a_bad_user_model_is_one_line(trained_project, model, message):
    use_model(trained_project, model)
    result = clrpipe("train", "baseline", "train.baseline.epochs=1", "tracking.enabled=false")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert not (trained_project / "models").exists()

"""The `range_test` stage on real data: outputs, MLflow run, bad config, CLR with its bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from clrpipe.pipeline import cli, config
from clrpipe.pipeline.stages import range_test as stage
from clrpipe.pipeline.stages import train

OUTPUTS = (stage.METRICS, stage.SWEEP_CSV, stage.SWEEP_PNG)


def stage_runs(project: Path, name: str):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("clrpipe")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`clrpipe.stage` = '{name}'"
    )
    return client, runs


def test_stage_writes_bounds_sweep_plot_and_tracks_them(trained_project):
    summary = stage.run(config.load(["range_test=default"]))

    found = json.loads(stage.METRICS.read_text())
    assert found == summary
    assert 0 < found["base_lr"] < found["max_lr"]
    assert {"base_lr", "max_lr"} <= set(found["spread"])
    assert {"steepest", "valley", "minimum", "loss_max"} <= set(found["suggestions"])
    seeds = [s["seed"] for s in found["per_seed"]]
    assert seeds == [0, 1, 2]

    sweep = pd.read_csv(stage.SWEEP_CSV)
    assert {"seed", "step", "lr", "loss", "smoothed_loss", "val_accuracy"} <= set(sweep.columns)
    assert sorted(sweep.seed.unique()) == seeds
    assert (sweep.groupby("seed").size() > 20).all()
    assert sweep.lr.min() == pytest.approx(found["config"]["min_lr"])
    assert stage.SWEEP_PNG.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    client, runs = stage_runs(trained_project, "range_test")
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.metrics["base_lr"] == found["base_lr"]
    assert run.data.metrics["max_lr"] == found["max_lr"]
    assert run.data.metrics["suggestion_steepest"] == found["suggestions"]["steepest"]
    for seed in seeds:
        history = client.get_metric_history(run.info.run_id, f"smoothed_loss_seed_{seed}")
        assert len(history) == sweep.smoothed_loss[sweep.seed == seed].notna().sum()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "range_test.json" in artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/sweep.png"}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("range_test.min_lr=20.0", "range_test.min_lr"),
        ("range_test.mode=bogus", "range_test.mode"),
        ("+range_test.typo=1", "range_test.typo"),
        ("range_test.validation_rows=-1", "range_test.validation_rows"),
        ("range_test.batch_size=100000", "range_test.batch_size"),
    ],
)
def test_bad_config_fails_in_one_line_naming_the_key(trained_project, override, key):
    result = CliRunner().invoke(cli.main, ["range-test", "range_test=default", override])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], lines
    for path in (*OUTPUTS, Path("mlflow.db")):
        assert not path.exists()


def test_clr_trains_within_the_bounds_found(trained_project):
    stage.run(config.load(["range_test=default", "tracking.enabled=false"]))
    found = json.loads(stage.METRICS.read_text())
    base, peak = found["base_lr"], found["max_lr"]

    cfg = config.load(
        [
            "schedule.initial_learning_rate=null",
            "schedule.maximal_learning_rate=null",
            "schedule.step_size_epochs=2",
            "train.clr.epochs=4",  # one full cycle
        ]
    )
    train.run(cfg, "clr")

    client, (run,) = stage_runs(trained_project, "train_clr")
    lrs = [m.value for m in client.get_metric_history(run.info.run_id, "learning_rate")]
    assert len(lrs) > 10
    assert min(lrs) >= base * (1 - 1e-6) and max(lrs) <= peak * (1 + 1e-6)
    assert min(lrs) == pytest.approx(base, rel=1e-3)
    assert max(lrs) == pytest.approx(peak, rel=1e-3)

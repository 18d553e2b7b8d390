"""StageRun's metric buffering, against a real SQLite store."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from clrpipe.pipeline.tracking import runs


@pytest.fixture
def stage(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("buffer")
    return runs.StageRun(client, client.create_run(experiment).info.run_id)


def steps(stage: runs.StageRun, key: str = "loss") -> list[int]:
    return [m.step for m in stage.client.get_metric_history(stage.run_id, key)]


def test_buffered_metrics_wait_for_the_interval_then_go_in_one_write(stage, monkeypatch):
    monkeypatch.setattr(runs, "BUFFER_SECONDS", 3600.0)
    for epoch in range(3):
        stage.log_metrics({"loss": 1.0 / (epoch + 1)}, step=epoch, buffered=True)
    assert steps(stage) == []
    monkeypatch.setattr(runs, "BUFFER_SECONDS", 0.0)
    stage.log_metrics({"loss": 0.25}, step=3, buffered=True)
    assert steps(stage) == [0, 1, 2, 3]


def test_an_unbuffered_write_and_flush_take_everything_waiting(stage, monkeypatch):
    monkeypatch.setattr(runs, "BUFFER_SECONDS", 3600.0)
    stage.log_metrics({"loss": 0.5}, step=0, buffered=True)
    stage.log_metrics({"test_accuracy": 0.7})
    assert steps(stage) == [0]
    stage.log_metrics({"loss": 0.4}, step=1, buffered=True)
    stage.flush()
    assert steps(stage) == [0, 1]
    assert steps(stage, "test_accuracy") == [0]


def test_an_inactive_stage_logs_nothing_and_flushes_quietly():
    off = runs.StageRun(None, None)
    off.log_metrics({"loss": 1.0}, step=0, buffered=True)
    off.flush()
    assert not off.active

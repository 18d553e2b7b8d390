"""Interrupting a training stage (issue 6): Ctrl-C (SIGINT) or SIGTERM while the model trains
ends the stage's MLflow run KILLED, tags it "interrupted", and leaves no model or metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from clrpipe.pipeline.tracking import runs

CLRPIPE = Path(sys.executable).with_name("clrpipe")


def _default_sigint() -> None:
    """Give the child the SIGINT disposition of a terminal's foreground job: a shell starting
    pytest in the background without job control would otherwise pass SIGINT on as ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _training_run(client: MlflowClient, stage: str, process: subprocess.Popen, log: Path):
    """Poll the store until `stage`'s run has logged an epoch, i.e. Keras `fit` is running."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the stage ended before it could be interrupted:\n{log.read_text()}")
        experiment = client.get_experiment_by_name("clrpipe")
        if experiment is not None:
            found = client.search_runs(
                [experiment.experiment_id], filter_string=f"tags.`{runs.STAGE_TAG}` = '{stage}'"
            )
            if found and client.get_metric_history(found[0].info.run_id, "loss"):
                return found[0]
        time.sleep(0.2)
    pytest.fail(f"no epoch of {stage} was logged:\n{log.read_text()}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_training_ends_killed_and_writes_nothing(trained_project, sig):
    store = f"sqlite:///{trained_project / 'mlflow.db'}"
    client = MlflowClient(store)
    client.search_experiments()  # create the store's tables before the stage and we both poll it
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    log = trained_project / "stage.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(CLRPIPE), "train", "baseline", "train.baseline.epochs=1000"],
            cwd=trained_project, env=env, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=_default_sigint,
        )
        try:
            run = _training_run(client, "train_baseline", process, log)
            process.send_signal(sig)
            returncode = process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert errors == [f"error: interrupted by {sig.name}; no outputs written"]
    assert returncode == 128 + sig
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[runs.ERROR_TAG] == "interrupted"
    assert 1 <= len(client.get_metric_history(run.info.run_id, "loss")) < 1000
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"
    assert not (trained_project / "models").exists()
    assert not (trained_project / "metrics").exists()
    assert not (trained_project / "plots").exists()

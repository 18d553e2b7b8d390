"""`clrpipe compare` on a real two-node Ray cluster whose worker node dies mid-run (issue 15):
the trial that was on it is retried on the head, the comparison completes, and MLflow holds
every trial exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from clrpipe.pipeline.tracking.runs import TRIAL_TAG
from tests.ray_cluster import remove, start_cluster

CLRPIPE = Path(sys.executable).with_name("clrpipe")
BOUNDS = {"base_lr": 1e-3, "max_lr": 5e-2}
NETWORKS = ("constant_range_test", "clr_triangular")
SEEDS = (0, 1)
TRAIN_ROWS, TEST_ROWS = 6000, 2000  # a slice of the real split: the cluster has 2 CPUs shared
WORKER_RESOURCE = "clrpipe_doomed_node"
TIMEOUT = 300  # the whole run; a loose bound so that the test can never hang
# The driver's core-worker log, when a task failed for a system reason (its worker or node
# died) and has retries left: "Attempting to resubmit task <id> for attempt number: <the
# failed attempt>" followed by "Will resubmit task ... function_name=<function> ...".
RESUBMITTED = re.compile(r"Attempting to resubmit task (\w+) for attempt number")
RESUBMITTED_FUNCTION = re.compile(r"Will resubmit task .*function_name=(\w+)")


@pytest.fixture
def small_project(trained_project: Path) -> Path:
    """The real split cut to a few thousand rows, plus a range-test result."""
    for name, rows in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        path = trained_project / "data" / "split" / f"{name}.parquet"
        pd.read_parquet(path).iloc[:rows].to_parquet(path)
    (trained_project / "metrics").mkdir()
    (trained_project / "metrics" / "range_test.json").write_text(json.dumps(BOUNDS))
    return trained_project


@pytest.fixture
def cluster():
    cluster = start_cluster({WORKER_RESOURCE: 1})
    try:
        yield cluster
    finally:
        cluster.stop()
        remove(cluster)


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.mark.slow
def test_compare_survives_losing_a_worker_node(small_project, cluster, postgres_server):
    """`compare` on a two-node Ray cluster, logging to a team's server on PostgreSQL, loses a
    worker node mid-trial: Ray retries the trial and every trial's run is FINISHED there."""
    resources = sorted(cluster.nodes, key=lambda r: WORKER_RESOURCE in r)
    assert [r.get("CPU") for r in resources] == [1.0, 1.0]
    assert WORKER_RESOURCE in resources[1] and WORKER_RESOURCE not in resources[0]
    # One machine: Ray registers both nodes under its reachable IP (`ray start` replaces a
    # loopback --node-ip-address with it), the same for both.
    ips = [{k for k in r if k.startswith("node:") and k != "node:__internal_head__"}
           for r in resources]
    assert len(ips[0]) == 1 and ips[0] == ips[1], resources

    log = small_project / "compare.log"
    deadline = time.monotonic() + TIMEOUT
    with log.open("w") as out:
        driver = subprocess.Popen(
            [str(CLRPIPE), "compare", f"compare.ray.address={cluster.address}",
             f"compare.select=[{','.join(NETWORKS)}]", f"compare.seeds={len(SEEDS)}",
             "compare.epochs=2", f"tracking.uri={postgres_server}"],
            cwd=small_project, env=cluster.env(), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            # Four trials, two CPUs (one per node): the head cannot take them all, so one
            # runs on the worker node. Kill that node while its trial is running: the title
            # `ray::network_trial` appears when the task starts, before the trial imports
            # Keras, warms up and trains (seconds), so the trial is well under way.
            victims = []
            while not victims:
                if driver.poll() is not None:
                    pytest.fail(f"compare ended before the worker node ran a trial "
                                f"(exit {driver.returncode}):\n{log.read_text()}\n"
                                f"{cluster.logs()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no trial ran on the worker node:\n{log.read_text()}\n"
                                f"{cluster.logs()}")
                victims = cluster.worker.running_tasks("network_trial")
                time.sleep(0.1)
            cluster.worker.kill()
            assert cluster.worker.processes() == []
            assert cluster.head.process.poll() is None

            try:
                driver.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"compare did not finish within {TIMEOUT} s:\n{log.read_text()}")
        finally:
            _kill_group(driver)
    output = log.read_text()
    assert driver.returncode == 0, f"{output}\n{cluster.logs()}"

    # Ray retried the killed trial (default max_retries=3 for a task whose worker or node
    # died); the driver's core-worker log names each resubmission.
    core_log = cluster.driver_core_log(driver.pid)
    resubmitted = set(RESUBMITTED.findall(core_log))
    assert len(resubmitted) >= len(victims), core_log[-5000:]
    assert set(RESUBMITTED_FUNCTION.findall(core_log)) == {"network_trial"}, core_log[-5000:]

    trials = sorted((m, s) for m in NETWORKS for s in SEEDS)
    report = json.loads((small_project / "metrics" / "compare.json").read_text())
    assert list(report["methods"]) == list(NETWORKS)
    assert all(report["methods"][m]["seeds"] == len(SEEDS) for m in NETWORKS)
    table = pd.read_csv(small_project / "plots" / "compare" / "trials.csv")
    assert sorted(zip(table.method, table.seed, strict=True)) == trials

    client = MlflowClient(postgres_server)
    experiment = client.get_experiment_by_name("clrpipe")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`clrpipe.stage` = 'compare'"
    )
    assert run.info.status == "FINISHED"
    kids = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
    )
    assert sorted(k.data.tags[TRIAL_TAG] for k in kids) == sorted(f"{m}/{s}" for m, s in trials)
    assert {k.info.status for k in kids} == {"FINISHED"}
    for kid in kids:
        assert 0.5 < kid.data.metrics["test_accuracy"] < 0.9

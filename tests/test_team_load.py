"""A team's tracking server under load and faults, for real: eight writer processes at once
against `clrpipe server` on PostgreSQL and on SQLite (no lost or duplicated metric point, no
run left RUNNING), and the PostgreSQL server restarted while a writer logs (MLflow's client
retries the server's 503s and the run ends FINISHED with every point). The throughput and
latency side by side are `bench/tracking_load.py`'s."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
from mlflow.tracking import MlflowClient

from tests import team_store

pytestmark = pytest.mark.slow

WRITERS = 8
POINTS = 25


@pytest.fixture(scope="module")
def postgres():
    with team_store.postgres() as pg:
        yield pg


def _run_writers(url: str, experiment_id: str, writers: int, points: int,
                 pause: float = 0.0) -> list[dict]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(writers, mp_context=context) as pool:
        futures = [pool.submit(team_store.writer, url, experiment_id, index, points, pause)
                   for index in range(writers)]
        return [future.result(timeout=600) for future in futures]


def _check_every_point(client: MlflowClient, experiment_id: str, done: list[dict],
                       points: int) -> None:
    runs = client.search_runs([experiment_id])
    assert len(runs) == len(done)
    assert {run.info.status for run in runs} == {"FINISHED"}
    for run in runs:
        index = int(run.data.params["writer"])
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [
            (step, team_store.value(index, step)) for step in range(points)]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_eight_writers_at_once_lose_nothing(backend, postgres, tmp_path):
    store = postgres.uri if backend == "postgresql" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    with team_store.tracking_server(store, tmp_path / "server", workers=2) as url:
        client = MlflowClient(url)
        experiment_id = client.create_experiment(f"load-{backend}")
        done = _run_writers(url, experiment_id, WRITERS, POINTS)
        assert len({d["run_id"] for d in done}) == WRITERS
        _check_every_point(client, experiment_id, done, POINTS)


def test_a_database_restart_mid_run_loses_nothing(postgres, tmp_path):
    """PostgreSQL stopped for two seconds after the writer's tenth point: the server answers
    503 (MLflow maps SQLAlchemy's OperationalError to TEMPORARILY_UNAVAILABLE), the client
    retries with clrpipe's HTTP_DEFAULTS, and the server's pool (pre-ping) reconnects."""
    with team_store.tracking_server(postgres.uri, tmp_path / "server") as url:
        client = MlflowClient(url)
        experiment_id = client.create_experiment("restart")

        def restart():  # once the writer has logged ten points
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                runs = client.search_runs([experiment_id])
                if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= 10:
                    break
                time.sleep(0.2)
            postgres.stop()
            time.sleep(2)
            postgres.start()

        thread = threading.Thread(target=restart)
        thread.start()
        try:
            done = _run_writers(url, experiment_id, 1, 60, pause=0.2)
        finally:
            thread.join()
        _check_every_point(client, experiment_id, done, 60)
        assert max(done[0]["latencies"]) > 1  # a call did wait for the database

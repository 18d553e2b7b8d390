"""`clrpipe server` for a team: a REAL PostgreSQL 15 (initdb in a temporary folder, TCP on
127.0.0.1) as the backend store, artifacts proxied by the server, MLflow's basic-auth app in
front; a real training stage logs to it with credentials from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests import team_store

pytestmark = pytest.mark.slow

ADMIN_PASSWORD = "team-admin-pw-1"
EPOCHS = 1


@pytest.fixture(scope="module")
def postgres():
    with team_store.postgres() as pg:
        yield pg


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    """`clrpipe server --auth` on the PostgreSQL store, until /health answers: its URL."""
    root = tmp_path_factory.mktemp("team_server")
    with team_store.tracking_server(
        postgres.uri, root, extra=("--auth", "--auth-db", f"sqlite:///{root / 'auth.db'}"),
        env={"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD},
    ) as url:
        yield url


def _admin_client(url: str, monkeypatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    return MlflowClient(url)


def test_an_unauthenticated_request_is_refused(team_server):
    request = f"{team_server}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401


def _stage(project: Path, url: str, password: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=url, MLFLOW_TRACKING_USERNAME="admin",
               MLFLOW_TRACKING_PASSWORD=password)
    return subprocess.run(
        [str(Path(sys.executable).with_name("clrpipe")), "train", "clr",
         f"train.clr.epochs={EPOCHS}", "schedule.initial_learning_rate=0.1",
         "schedule.maximal_learning_rate=0.5"],
        cwd=project, env=env, capture_output=True, text=True,
    )


def test_a_stage_with_credentials_logs_to_postgres(team_server, trained_project, monkeypatch):
    done = _stage(trained_project, team_server, ADMIN_PASSWORD)
    assert done.returncode == 0, done.stderr
    client = _admin_client(team_server, monkeypatch)
    experiment = client.get_experiment_by_name("clrpipe")
    (run,) = client.search_runs([experiment.experiment_id],
                                filter_string="tags.`clrpipe.stage` = 'train_clr'")
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == EPOCHS
    assert client.get_run(run.data.tags["mlflow.parentRunId"]).info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts  # proxied by the server into its artifacts destination


def test_a_wrong_password_fails_in_one_line(team_server, trained_project, monkeypatch):
    done = _stage(trained_project, team_server, "not-the-password")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert team_server in lines[0]
    assert "MLFLOW_TRACKING_PASSWORD" in lines[0]
    assert not Path(trained_project / "metrics" / "train_clr.json").exists()
    client = _admin_client(team_server, monkeypatch)
    experiment = client.get_experiment_by_name("clrpipe")
    if experiment is not None:
        running = client.search_runs([experiment.experiment_id],
                                     filter_string="attributes.status = 'RUNNING'")
        assert running == []


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["--backend-store-uri", "mlflow.db"], {},
     "error: --backend-store-uri 'mlflow.db': expected a database URI"),
    (["--backend-store-uri", "postgresql://u@127.0.0.1/m", "--auth"], {},
     "error: --auth: set MLFLOW_AUTH_ADMIN_PASSWORD"),
])
def test_bad_server_input_is_one_line_and_writes_nothing(tmp_path, args, env, expected):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("clrpipe")), "server", *args,
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, env={**clean, **env}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(expected), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_the_server_command_binds_locally_and_names_psycopg2(tmp_path, monkeypatch):
    from clrpipe.pipeline.tracking.server import server_command

    monkeypatch.chdir(tmp_path)
    argv, env = server_command("postgresql://u@db/m", str(tmp_path / "a"), "127.0.0.1", 5000, 2,
                               auth=True, auth_db=None,
                               environ={"MLFLOW_AUTH_ADMIN_PASSWORD": "x"})
    assert argv[argv.index("--backend-store-uri") + 1] == "postgresql+psycopg2://u@db/m"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--serve-artifacts" in argv and argv[-2:] == ["--app-name", "basic-auth"]
    ini = (tmp_path / "mlflow_auth.ini").read_text()
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(tmp_path / "mlflow_auth.ini")
    assert f"database_uri = sqlite:///{tmp_path / 'mlflow_auth.db'}" in ini
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"]

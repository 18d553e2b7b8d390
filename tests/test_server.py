"""`clrpipe server` for a team: a REAL PostgreSQL 15 (initdb in a temporary folder, TCP on
127.0.0.1) as the backend store, artifacts proxied by the server, MLflow's basic-auth app in
front; a real training stage logs to it with credentials from the environment."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import _healthy, stop_server

pytestmark = pytest.mark.slow

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ADMIN_PASSWORD = "team-admin-pw-1"
EPOCHS = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Postgres:
    """A throwaway PostgreSQL cluster; as root, run as `nobody` (initdb refuses root)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="clrpipe-pg-"))
        self.port = _free_port()
        self.as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "nobody")
        self.data = self.root / "data"
        self.uri = f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    def run(self, *argv: str) -> None:
        done = subprocess.run([*self.as_user, *argv], capture_output=True, text=True)
        assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"

    def start(self) -> None:
        self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                 str(self.root / "pg.log"), "-o",
                 f"-h 127.0.0.1 -p {self.port} -k {self.root}", "start")

    def stop(self) -> None:
        self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create(self) -> None:
        self.run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8")
        self.start()
        self.run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                 "-U", "postgres", "mlflow")


@pytest.fixture(scope="module")
def postgres():
    if not (PG_BIN / "initdb").is_file():
        pytest.fail(f"{PG_BIN}: PostgreSQL 15 is needed (Debian package postgresql-15)")
    pg = Postgres()
    try:
        pg.create()
        yield pg
    finally:
        with contextlib.suppress(AssertionError):
            pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    """`clrpipe server --auth` on the PostgreSQL store, until /health answers: its URL."""
    root = tmp_path_factory.mktemp("team_server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("clrpipe")), "server",
         "--backend-store-uri", postgres.uri, "--artifacts-destination", str(root / "artifacts"),
         "--port", str(port), "--workers", "1", "--auth",
         "--auth-db", f"sqlite:///{root / 'auth.db'}"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"clrpipe server did not start:\n{(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        stop_server(server)
        log.close()


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

"""Shared fixtures: the real cardio table (never committed) and a scratch project folder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.team_store import healthy as _healthy
from tests.team_store import stop as stop_server

REPO = Path(__file__).resolve().parents[1]
CARDIO_CSV = Path(
    os.environ.get("CLRPIPE_CARDIO_CSV", REPO.parent / "shared" / "data" / "cardio_train.csv")
)


@pytest.fixture(scope="session")
def cardio_csv() -> Path:
    """The real Kaggle table, read from ../shared/data (or $CLRPIPE_CARDIO_CSV)."""
    if not CARDIO_CSV.is_file():
        pytest.fail(f"{CARDIO_CSV}: the real cardio table is needed; set CLRPIPE_CARDIO_CSV")
    return CARDIO_CSV


@pytest.fixture(scope="session")
def cardio_bytes(cardio_csv: Path) -> bytes:
    return cardio_csv.read_bytes()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch copy of the project's config, used as the working directory."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def real_split(tmp_path_factory, cardio_csv) -> Path:
    """A project folder after real `clrpipe prepare` and `clrpipe split` processes."""
    root = tmp_path_factory.mktemp("real")
    shutil.copytree(REPO / "conf", root / "conf")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    exe = Path(sys.executable).with_name("clrpipe")
    for stage in ("prepare", "split"):
        done = subprocess.run(
            [str(exe), stage, f"data.raw={cardio_csv}"], cwd=root, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def trained_project(real_split: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch project whose split outputs are the real ones, with its own MLflow store."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(real_split / "data" / "split", tmp_path / "data" / "split")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory) -> str:
    """A team's server: a real throwaway PostgreSQL 15 and `clrpipe server` on it (proxied
    artifacts in tmp, no auth: tests/test_server.py covers auth). One per test module."""
    from tests import team_store

    with team_store.postgres() as pg, team_store.tracking_server(
            pg.uri, tmp_path_factory.mktemp("postgres_server"), workers=2) as url:
        yield url


def _start_mlflow_server(root: Path) -> tuple[str, subprocess.Popen, object]:
    """A real `mlflow server` on a free 127.0.0.1 port in its own session (SQLite backend and
    proxied artifacts in `root`), once its /health answers: (url, process, log file)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1",
        ],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not _healthy(url):
        if server.poll() is not None or time.monotonic() > deadline:
            os.killpg(server.pid, signal.SIGKILL)
            log.close()
            pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
        time.sleep(0.5)
    return url, server, log


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> str:
    """A real `mlflow server` on a free 127.0.0.1 port: SQLite backend, proxied artifact store
    in tmp. One per test module; it is stopped (SIGTERM, then SIGKILL) when the module ends."""
    url, server, log = _start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield url
    finally:
        stop_server(server)
        log.close()


class KillableServer:
    """A running `mlflow server` that a test may kill (see `killable_mlflow_server`)."""

    def __init__(self, url: str, root: Path, process: subprocess.Popen):
        self.url, self.root, self.process = url, root, process

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL the server's whole process group (gunicorn/uvicorn workers included)."""
        import contextlib

        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def freeze(self) -> None:
        """SIGSTOP the server's process group: connections are accepted, never answered."""
        os.killpg(self.process.pid, signal.SIGSTOP)


@pytest.fixture
def killable_mlflow_server(tmp_path_factory) -> KillableServer:
    """Like `mlflow_server`, but one per test and its own to kill (`.kill()`): the SQLite
    backend stays in `.root / "mlflow.db"` after the server is gone."""
    root = tmp_path_factory.mktemp("killable_server")
    url, server, log = _start_mlflow_server(root)
    handle = KillableServer(url, root, server)
    try:
        yield handle
    finally:
        handle.kill()
        log.close()


@pytest.fixture(autouse=True)
def _tracking_environment_restored():
    """`mlflow.set_tracking_uri` exports $MLFLOW_TRACKING_URI: a test that calls it (to load a
    model from a server) must not send later tests' stages to that server."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")
    before = {name: os.environ.get(name) for name in names}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


FIT_ROWS = 1003  # batch 32 leaves a short last batch of 11 rows


@pytest.fixture(scope="module")
def data():
    """Rows for training-loop identity tests: (x, y, x_val, y_val), FIT_ROWS of them to fit."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(FIT_ROWS + 200, 5)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.7, size=len(x)) > 0).astype("float32")
    return x[:FIT_ROWS], y[:FIT_ROWS], x[FIT_ROWS:], y[FIT_ROWS:]

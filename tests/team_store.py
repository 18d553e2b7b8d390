"""A team's tracking store for the tests and `bench/tracking_load.py`: a REAL throwaway
PostgreSQL 15 cluster (initdb in a temporary folder, TCP on 127.0.0.1; as root it runs as
`nobody`, since initdb refuses root), `clrpipe server` on it or on SQLite, and the load writer
both the load test and the benchmark run in separate processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Postgres:
    """A throwaway PostgreSQL cluster with one database, `mlflow`."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="clrpipe-pg-"))
        self.port = free_port()
        self.as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "nobody")
        self.data = self.root / "data"
        self.uri = f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    def run(self, *argv: str) -> None:
        done = subprocess.run([*self.as_user, *argv], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{argv}: {done.stdout}\n{done.stderr}")

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


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A started cluster, stopped and deleted afterwards."""
    if not (PG_BIN / "initdb").is_file():
        raise RuntimeError(f"{PG_BIN}: PostgreSQL 15 is needed (Debian package postgresql-15)")
    pg = Postgres()
    try:
        pg.create()
        yield pg
    finally:
        with contextlib.suppress(RuntimeError):
            pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)


def healthy(url: str, endpoint: str = "health") -> bool:
    """Whether `url/endpoint` answers 200 within 2 s (`ping` for `mlflow models serve`)."""
    try:
        with urllib.request.urlopen(f"{url}/{endpoint}", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its workers too), SIGKILL after 30 s."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@contextlib.contextmanager
def tracking_server(backend_store_uri: str, root: Path, *, workers: int = 1,
                    extra: tuple[str, ...] = (), env: dict[str, str] | None = None
                    ) -> Iterator[str]:
    """`clrpipe server` on `backend_store_uri` (artifacts under `root`) until /health answers:
    its URL; stopped afterwards. Its log is `root/server.log`."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environ.update(env or {})
    with (root / "server.log").open("w") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("clrpipe")), "server",
             "--backend-store-uri", backend_store_uri,
             "--artifacts-destination", str(root / "artifacts"),
             "--port", str(port), "--workers", str(workers), *extra],
            cwd=root, stdout=log, stderr=subprocess.STDOUT, env=environ,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        try:
            while not healthy(url):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"clrpipe server did not start:\n"
                                       f"{(root / 'server.log').read_text()}")
                time.sleep(0.5)
            yield url
        finally:
            stop(server)


def writer(url: str, experiment_id: str, index: int, points: int, pause: float = 0.0) -> dict:
    """One load writer (run it in its own process): a run with two params, `points` values of
    metric `loss` logged one call each (as a training loop's per-epoch logging does), then
    FINISHED. Returns its run id and each call's latency in seconds."""
    from clrpipe.pipeline.tracking.runs import HTTP_DEFAULTS

    for key, setting in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, setting)
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "View run" line per run
    client = MlflowClient(url)
    run = client.create_run(experiment_id, run_name=f"writer-{index}")
    run_id = run.info.run_id
    client.log_param(run_id, "writer", index)
    client.log_param(run_id, "points", points)
    latencies = []
    for step in range(points):
        start = time.perf_counter()
        client.log_metric(run_id, "loss", value(index, step), step=step)
        latencies.append(time.perf_counter() - start)
        if pause:
            time.sleep(pause)
    client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "latencies": latencies}


def value(index: int, step: int) -> float:
    """The value writer `index` logs at `step`: unique, so a lost or duplicated point shows."""
    return index * 1000.0 + step / 8

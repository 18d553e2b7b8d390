"""The tracking store a stage writes to: a SQLite file (created under an fcntl lock, its
artifacts beside it) or a tracking server (probed once at stage start), and the one-line reason
for a store or connection failure. Used by `runs`; split from it along that seam."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline.config import project_root

ARTIFACTS_FOLDER = "mlartifacts"
PROBE_TIMEOUT = (3.0, 5.0)  # connect, read: the one /health request at stage start
LOCK_TIMEOUT = 120.0  # seconds to wait for another process creating the store



def sqlite_file(uri: str) -> Path | None:
    """The database file of an absolute `sqlite:////path.db` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    return Path(path) if path.startswith("/") else None


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite store, else the server's choice."""
    db = sqlite_file(uri)
    if db is None:
        return None
    return str(db.parent / ARTIFACTS_FOLDER / re.sub(r"[^\w.-]+", "_", experiment))


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, hold an exclusive fcntl lock on `<db>.lock` (creating the store's
    tables and its Default experiment on first use while holding it)."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    if not db.parent.is_dir():
        raise ClrpipeError(f"tracking store {uri}: folder {db.parent} does not exist")
    lock = db.with_name(db.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise ClrpipeError(f"tracking store {uri}: cannot create {lock}: {err.strerror}") from err
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClrpipeError(
                        f"tracking store {uri}: {lock} still locked by another process after "
                        f"{LOCK_TIMEOUT:.0f} s"
                    ) from None
                time.sleep(0.05)
        if not db.is_file() or db.stat().st_size == 0:
            _create_store(uri, db)
        yield
    finally:
        os.close(fd)  # releases the lock


def _create_store(uri: str, db: Path) -> None:
    """Tables and the Default experiment, with artifacts beside the db (MLflow would put the
    Default experiment's under the creating process's ./mlruns)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(uri, str(db.parent / ARTIFACTS_FOLDER))
    store.engine.dispose()


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri, name))
    except MlflowException as err:  # created meanwhile by another process (server stores)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise ClrpipeError(
                f"tracking store {uri}: cannot create experiment '{name}': {reason(err)}"
            ) from err
        return experiment.experiment_id


def is_http(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def check_server(uri: str) -> None:
    """A tracking server that does not answer fails the stage now, in one line."""
    if is_http(uri) and (lost := server_lost(uri)) is not None:
        raise ClrpipeError(unreachable(uri, lost))


def server_lost(uri: str, timeout: tuple[float, float] = PROBE_TIMEOUT) -> str | None:
    """For a tracking server that cannot be reached, why (one try, a few seconds); else None.
    Any HTTP answer, even an error status, means it is there."""
    if not is_http(uri):
        return None
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except requests.RequestException as err:
        return reason(err, seconds=max(timeout))
    return None


def unreachable(uri: str, why: str) -> str:
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    db = project_root() / "mlflow.db"
    return (
        f"tracking server {uri} is not reachable ({why}); start one with `mlflow server "
        f"--backend-store-uri sqlite:///{db} --host {parts.hostname} --port {port}`, or set "
        "tracking.uri (or $MLFLOW_TRACKING_URI) to sqlite:///mlflow.db"
    )


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """MLflow HTTP calls with one attempt and a 1 s timeout (after the server was lost; else
    its atexit hook would end the active run with the full retries on the way out)."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "1"}
    before = {name: os.environ.get(name) for name in quick}
    os.environ.update(quick)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def is_store_error(err: BaseException) -> bool:
    import requests
    import sqlalchemy

    return isinstance(
        err, MlflowException | requests.RequestException | sqlalchemy.exc.SQLAlchemyError
    )


def reason(err: BaseException, seconds: float | None = None) -> str:
    """A short why for a store or connection failure (`seconds`: the timeout that applied,
    else MLflow's per-request one)."""
    text = " ".join(str(e) for e in _chain(err))
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    retried = "API request to" in text and "Max retries exceeded" in text  # MLflow's client
    tries = f" after {retries} retries" if retried and retries else ""
    if "Connection refused" in text:
        return f"connection refused{tries}"
    if "timed out" in text.lower() or "timeout" in text.lower():
        waited = f"{seconds:g}" if seconds else os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "?")
        return f"no answer within {waited} s{tries}"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    if "error code 401" in text:  # MLflow's basic-auth app: no or wrong credentials
        return ("the server refused the credentials (HTTP 401); set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD to a user of this server")
    if "error code 403" in text:
        return ("the user has no permission here (HTTP 403); ask the server's admin for one "
                "(MLFLOW_TRACKING_USERNAME names the user)")
    line = first_line(err)
    line = re.sub(r"^\((\w+\.)*\w+\)\s*", "", line)  # "(sqlite3.OperationalError) ..."
    return line.split(" [SQL:", 1)[0][:300]


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen

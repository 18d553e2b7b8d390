"""`clrpipe server`: a team's MLflow tracking server in one command.

`mlflow server` with the given backend store (PostgreSQL for a team: `postgresql://user:pw@host/db`,
driver psycopg2), artifacts proxied by the server (`--serve-artifacts` into
`--artifacts-destination`), bound to 127.0.0.1 unless `--host` says otherwise. A plain
`postgresql://` URI is given the psycopg2 driver (SQLAlchemy 2.1 would pick psycopg 3, absent).
With `--auth`, MLflow's basic-auth app guards it: its users live in `--auth-db`, the admin's
password comes from $MLFLOW_AUTH_ADMIN_PASSWORD on the first start (MLflow ships none), and
clients pass $MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD. The auth settings go to
an INI file that $MLFLOW_AUTH_CONFIG_PATH points the server at (MLflow 3.17:
mlflow/server/auth/config.py).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from clrpipe.errors import ClrpipeError

__all__ = ["AUTH_INI", "auth_ini", "server_command"]

AUTH_INI = "mlflow_auth.ini"


def auth_ini(auth_db: str, default_permission: str = "READ") -> str:
    """The basic-auth app's settings: users in `auth_db`, admin `admin`, others `READ`."""
    return (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {auth_db}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def server_command(backend_store_uri: str, artifacts_destination: str, host: str, port: int,
                   workers: int, auth: bool, auth_db: str | None,
                   environ=os.environ) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` argv and environment; with auth, writes the INI in the cwd."""
    if "://" not in backend_store_uri:
        raise ClrpipeError(f"--backend-store-uri {backend_store_uri!r}: expected a database "
                           "URI, e.g. postgresql://user:password@127.0.0.1:5432/mlflow")
    if backend_store_uri.startswith("postgresql://"):  # SQLAlchemy 2.1's default: psycopg 3
        backend_store_uri = "postgresql+psycopg2://" + backend_store_uri.split("://", 1)[1]
    argv = [str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", backend_store_uri,
            "--serve-artifacts", "--artifacts-destination", artifacts_destination,
            "--host", host, "--port", str(port), "--workers", str(workers)]
    env = dict(environ)
    if auth:
        if not environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
            raise ClrpipeError("--auth: set MLFLOW_AUTH_ADMIN_PASSWORD, the password MLflow "
                               "gives the user 'admin' on the first start")
        db = auth_db or f"sqlite:///{Path.cwd() / 'mlflow_auth.db'}"
        ini = Path.cwd() / AUTH_INI
        ini.write_text(auth_ini(db))
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        # CSRF key of the auth app's forms: one per start unless set (servers behind one
        # load balancer must share it)
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
        argv += ["--app-name", "basic-auth"]
    return argv, env

"""Stage runs whose process is gone: who runs a stage, and closing what it left RUNNING.

A stage killed outright (SIGKILL, OOM, a lost machine) cannot end its run: every stage run is
tagged with the host, pid and process start time of its process (`process_tags`), and a stage
opening a run first sets FAILED (tag `clrpipe.error` = ABANDONED) the experiment's RUNNING stage
runs whose process is gone (`close_abandoned`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from clrpipe.pipeline.tracking.tags import (
    ABANDONED,
    ERROR_TAG,
    HOST_TAG,
    PID_NAMESPACE_TAG,
    PID_TAG,
    PIPELINE_TAG,
    PROCESS_START_TAG,
    STAGE_TAG,
    STARTED_TAG,
)

__all__ = ["close_abandoned", "process_gone", "process_tags"]


def process_tags(pid: int | None = None) -> dict[str, str]:
    """The tags naming the process that runs a stage (this one, or `pid`): what
    `process_gone` reads back."""
    pid = os.getpid() if pid is None else pid
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(pid),
        PROCESS_START_TAG: _process_start(pid) or "",
        PID_NAMESPACE_TAG: _pid_namespace(),
        STARTED_TAG: datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks after boot (field 22), or None."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _pid_namespace() -> str:
    """`<boot id>/<pid namespace>`: pids compare only within one boot and one namespace."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def process_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process recorded in a run's tags has certainly ended."""
    if tags.get(HOST_TAG) != socket.gethostname():
        return False
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return False
    then, here = tags.get(PID_NAMESPACE_TAG, ""), _pid_namespace()
    if then and here and then != here:
        return then.split("/")[0] != here.split("/")[0]  # rebooted since; else can't tell
    if Path("/proc/self/stat").is_file():
        fields = _proc_stat(pid)
        if fields is None or fields[0] in ("Z", "X"):  # no such process, or ended unreaped
            return True
        recorded = tags.get(PROCESS_START_TAG)
        return bool(recorded) and recorded != _process_start(pid)  # the pid was reused
    try:  # no /proc: the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def close_abandoned(client: MlflowClient, experiment_id: str) -> None:
    """Set FAILED (tagged ABANDONED) this host's RUNNING stage runs whose process is gone."""
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'"
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=query, max_results=500, page_token=token
        )
        for run in page:
            if STAGE_TAG in run.data.tags and process_gone(run.data.tags):
                client.set_tag(run.info.run_id, ERROR_TAG, ABANDONED)
                client.set_terminated(run.info.run_id, "FAILED")
                parent = run.data.tags.get(MLFLOW_PARENT_RUN_ID)
                if parent:
                    with contextlib.suppress(MlflowException):
                        if PIPELINE_TAG in client.get_run(parent).data.tags:
                            client.set_terminated(parent, "FAILED")
        token = page.token
        if not token:
            return

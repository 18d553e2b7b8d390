"""Scratch copies of the project for the benchmark and the CI pipeline (no heavy imports)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# Inherited settings that would send runs elsewhere than the scratch copy's own store.
RUN_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "DVC_ROOT",
           "DVC_EXP_NAME")


def copy_worktree(project: Path, target: Path) -> Path:
    """Copy the project's tracked and untracked-but-not-ignored files (so no data, caches or
    MLflow stores) into `target` and make it a git repository of its own, as DVC needs one."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=project, capture_output=True, text=True, check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = project / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    return target


def tool_env(csv: Path) -> dict[str, str]:
    """Environment for `dvc`/`clrpipe` subprocesses: this interpreter's scripts first on PATH,
    the raw table named by $CLRPIPE_CARDIO_CSV (the fetch stage copies it), none of RUN_ENV."""
    env = {**os.environ, "CLRPIPE_CARDIO_CSV": str(csv)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key in RUN_ENV:
        env.pop(key, None)
    return env

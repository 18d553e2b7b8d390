"""MLflow tracking: one parent run per pipeline execution, one child run per stage.

A DVC pipeline runs each stage in its own process, so the parent is found, not passed: its key
is the git commit, the DVC experiment name ($DVC_EXP_NAME) and the params.yaml content, the same
for every stage of one execution. Under `mlflow run` the run MLflow started ($MLFLOW_RUN_ID) is
the parent. Runs are driven through `MlflowClient` with explicit ids, so nothing depends on the
fluent API's notion of an active run (`mlflow run` + `set_experiment` = mlflow#2735).

Where runs go: $MLFLOW_TRACKING_URI, when set, overrides `tracking.uri`. `mlflow run` (and its
Kubernetes backend) sets it to the store holding the run it started, so the stage's child run
lands next to its parent; that parent's experiment wins over `tracking.experiment`.

A stage that raises ends its run FAILED (KILLED on Ctrl-C or SIGTERM) with the error as a tag.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import DictConfig, OmegaConf

from clrpipe.config import PARAMS_FILE, Section
from clrpipe.outputs import uninterruptible

PIPELINE_TAG = "clrpipe.pipeline"
BUFFER_SECONDS = 5.0  # buffered metrics reach the store at most this often (see StageRun)
STAGE_TAG = "clrpipe.stage"
ERROR_TAG = "clrpipe.error"


class TrackingParams(Section):
    """`tracking:` where runs go."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "clrpipe"
    enabled: bool = True


def project_root() -> Path:
    """$DVC_ROOT when DVC runs the stage, else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def store_uri(configured: str, environ: Mapping[str, str] = os.environ) -> str:
    """$MLFLOW_TRACKING_URI when set and not empty, else `tracking.uri`; made absolute."""
    return resolve_uri(environ.get("MLFLOW_TRACKING_URI") or configured)


def resolve_uri(uri: str) -> str:
    """Make a relative `sqlite:///file.db` absolute against the project root."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(project_root() / uri[len(prefix):])
    return uri


def git_commit() -> str:
    """HEAD's commit, or "unknown" outside a git checkout or without git (as in the image)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=project_root()
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`, lists kept as their text."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class StageRun:
    """Handle on a stage's MLflow run: explicit-id logging helpers."""

    def __init__(self, client: MlflowClient | None, run_id: str | None):
        self.client = client
        self.run_id = run_id
        self._buffer: list[Metric] = []
        self._sent = time.monotonic()

    @property
    def active(self) -> bool:
        return self.client is not None

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, *, buffered: bool = False
    ) -> None:
        """Log now, or with `buffered` collect them and write one batch at most every
        BUFFER_SECONDS: per-epoch metrics while training, where a store write per epoch (about
        10 ms) slows 0.1-0.25 s epochs by several percent. `flush` writes the rest; `stage_run`
        flushes before it ends the run. (MLflow's own async logging is no cheaper here: ending a
        run waits up to a second for its logging thread to notice.)"""
        if not self.active:
            return
        now = _now_ms()
        self._buffer.extend(Metric(k, float(v), now, step or 0) for k, v in metrics.items())
        if not buffered or time.monotonic() - self._sent >= BUFFER_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.active:
            return
        log_metric_batches(self.client, self.run_id, self._buffer)
        self._buffer = []
        self._sent = time.monotonic()

    def log_series(self, key: str, steps: list[int], values: list[float]) -> None:
        """One metric at many steps, written now (with anything buffered)."""
        if self.active:
            now = _now_ms()
            self._buffer.extend(
                Metric(key, float(v), now, int(s)) for s, v in zip(steps, values, strict=True)
            )
            self.flush()

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        if self.active:
            self.client.log_artifact(self.run_id, str(path), folder)

    def log_artifacts(self, folder: Path, into: str | None = None) -> None:
        if self.active:
            self.client.log_artifacts(self.run_id, str(folder), into)

    def log_dict(self, data: Mapping, name: str) -> None:
        if self.active:
            self.client.log_dict(self.run_id, dict(data), name)

    def set_tag(self, key: str, value: str) -> None:
        if self.active:
            self.client.set_tag(self.run_id, key, value)


def log_metric_batches(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    """Write `metrics` in batches of 1000, MLflow's limit per `log_batch` call."""
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def stage_run(cfg: DictConfig, stage: str) -> Iterator[StageRun]:
    """Open the child run of `stage` under this pipeline execution's parent run."""
    from clrpipe import config

    params = config.section(cfg, "tracking", TrackingParams)
    if not params.enabled:
        yield StageRun(None, None)
        return
    with _environment_kept("MLFLOW_TRACKING_URI"):  # set_tracking_uri exports it
        uri = store_uri(params.uri)
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        parent_id = os.environ.pop("MLFLOW_RUN_ID", None)
        launched = parent_id is not None  # by `mlflow run`, which sets its own run's status
        if parent_id:
            experiment_id = client.get_run(parent_id).info.experiment_id
        else:
            experiment_id = _experiment_id(client, params.experiment)
            parent_id = _pipeline_parent(client, experiment_id)
        tags = {
            MLFLOW_PARENT_RUN_ID: parent_id,
            MLFLOW_RUN_NAME: stage,
            STAGE_TAG: stage,
            "mlflow.source.git.commit": git_commit(),
            "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        }
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        mlflow.start_run(run_id=run_id)
        tracked = StageRun(client, run_id)
        try:
            flat = flatten(OmegaConf.to_container(cfg, resolve=True))
            items = [Param(k, v[:6000]) for k, v in flat.items()]
            for start in range(0, len(items), 100):
                client.log_batch(run_id, params=items[start : start + 100])
            yield tracked
            tracked.flush()
        except KeyboardInterrupt:
            with uninterruptible():
                _flush_quietly(tracked)
                client.set_tag(run_id, ERROR_TAG, "interrupted")
                mlflow.end_run("KILLED")
                client.set_terminated(parent_id, "KILLED")
            raise
        except BaseException as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            with uninterruptible():
                _flush_quietly(tracked)
                client.set_tag(run_id, ERROR_TAG, message[:5000])
                mlflow.end_run("FAILED")
                client.set_terminated(parent_id, "FAILED")
            raise
        with uninterruptible():
            mlflow.end_run("FINISHED")
            if not launched:  # a shared pipeline parent an earlier failure left FAILED/KILLED
                client.set_terminated(parent_id, "FINISHED")


def _flush_quietly(tracked: StageRun) -> None:
    """Finish queued writes before a failed run is ended, without masking the failure."""
    with contextlib.suppress(Exception):
        tracked.flush()


@contextlib.contextmanager
def _environment_kept(name: str) -> Iterator[None]:
    """Restore environment variable `name` afterwards: `mlflow.set_tracking_uri` exports
    $MLFLOW_TRACKING_URI, which would otherwise override the next stage's `tracking.uri`."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel stage
        return client.get_experiment_by_name(name).experiment_id


def _pipeline_parent(client: MlflowClient, experiment_id: str) -> str:
    params_text = PARAMS_FILE.read_bytes() if PARAMS_FILE.is_file() else b""
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    key = hashlib.sha256(
        b"\0".join([git_commit().encode(), exp_name.encode(), params_text])
    ).hexdigest()[:16]
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        tags={
            PIPELINE_TAG: key,
            MLFLOW_RUN_NAME: f"pipeline {exp_name or 'workspace'} {key[:7]}",
            "mlflow.source.git.commit": git_commit(),
            "dvc.exp_name": exp_name,
        },
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id

"""MLflow tracking: one parent run per pipeline execution, one child run per stage.

A DVC pipeline runs each stage in its own process, so the parent is found, not passed: its key
is the git commit, the DVC experiment name ($DVC_EXP_NAME) and the params.yaml content, the same
for every stage of one execution. Under `mlflow run` the run MLflow started ($MLFLOW_RUN_ID) is
the parent. Runs are driven through `MlflowClient` with explicit ids, so nothing depends on the
fluent API's notion of an active run (`mlflow run` + `set_experiment` = mlflow#2735).

Where runs go: $MLFLOW_TRACKING_URI, when set, overrides `tracking.uri`. `mlflow run` (and its
Kubernetes backend) sets it to the store holding the run it started, so the stage's child run
lands next to its parent; that parent's experiment wins over `tracking.experiment`.

The project root is $DVC_ROOT (else the working directory), except that a path inside a DVC
experiment copy (`<project>/.dvc/tmp/exps/<copy>/...`, where `--temp` and queued experiments
run and which DVC deletes afterwards) stands for the same path in the real project. A relative
`sqlite:///mlflow.db` is made absolute against that root, so every process (the workspace, a
queued or `--temp` experiment, another checkout given the same absolute URI) writes one store.

Where artifacts go: an experiment created in a SQLite store gets the absolute artifact location
`<folder of the .db>/mlartifacts/<experiment>` (MLflow's default, `./mlruns` of whichever
process creates it, would point into a DVC copy that is deleted). A tracking server chooses its
own (`--artifacts-destination`). Creating the SQLite store, its tables and the experiment is done
under an fcntl lock on `<store>.db.lock` beside the db, so parallel stages cannot race.

A tracking server is checked at stage start (GET /health, one try): an unreachable one fails the
stage at once with a `ClrpipeError` saying how to start one. During a run MLflow's HTTP client
retries each call; `stage_run` sets these defaults (with `os.environ.setdefault`, so a value the
user exported wins) so that a server that dies fails the stage in well under two minutes
instead of many (MLflow's own are 7 retries, backoff factor 2 and a 120 s timeout):

    MLFLOW_HTTP_REQUEST_MAX_RETRIES=4       retries per call (urllib3 backoff 0, 4, 8, 16 s)
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=2
    MLFLOW_HTTP_REQUEST_BACKOFF_JITTER=1    up to 1 s added to each backoff
    MLFLOW_HTTP_REQUEST_TIMEOUT=10          seconds per attempt (connect, or between bytes read)

With those, a stage whose server is killed (connections refused) fails about 30 s later, one
whose server hangs (connections accepted, never answered) about 85 s later, with one
`ClrpipeError` line naming the server and no further waiting on it; the run it could not close
stays RUNNING on the server until the next stage on this host marks it abandoned (below).

A stage that raises ends its run FAILED (KILLED on Ctrl-C or SIGTERM) with the error as a tag.
A stage killed outright (SIGKILL, OOM, a lost machine) cannot: a stage opening a run first closes
the runs such stages left RUNNING (`tracking.abandoned`). Trial runs under a stage's run are
`tracking.trials`; the tags all of them write are named in `tracking.tags`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import DictConfig, OmegaConf

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline.config import PARAMS_FILE, flatten, project_root, real_path
from clrpipe.pipeline.outputs import uninterruptible
from clrpipe.pipeline.params import TrackingParams
from clrpipe.pipeline.tracking import store
from clrpipe.pipeline.tracking.abandoned import close_abandoned, process_tags
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
    TRIAL_TAG,
)

__all__ = [
    "ABANDONED",
    "BUFFER_SECONDS",
    "ERROR_TAG",
    "HOST_TAG",
    "HTTP_DEFAULTS",
    "MODEL_PACKAGES",
    "PID_NAMESPACE_TAG",
    "PID_TAG",
    "PIPELINE_TAG",
    "PROCESS_START_TAG",
    "STAGE_TAG",
    "STARTED_TAG",
    "TRIAL_TAG",
    "StageRun",
    "git_commit",
    "model_requirements",
    "resolve_uri",
    "stage_run",
    "store_uri",
]

# "Creating initial MLflow database ...", and logging a model in a uv project: "Detected uv
# project ...", "Copied uv.lock to model artifacts" (MLflow 3.17, INFO): a stage that succeeds
# prints nothing from MLflow; warnings and errors still show.
for _chatty in ("mlflow.store.db.utils", "alembic", "mlflow.utils.uv_utils"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

BUFFER_SECONDS = 5.0  # buffered metrics reach the store at most this often (see StageRun)
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def store_uri(configured: str, environ: Mapping[str, str] = os.environ) -> str:
    """$MLFLOW_TRACKING_URI when set and not empty, else `tracking.uri`; made absolute."""
    return resolve_uri(environ.get("MLFLOW_TRACKING_URI") or configured)


def resolve_uri(uri: str) -> str:
    """Make a relative `sqlite:///file.db` absolute against the project root, and one inside a
    DVC experiment copy point into the real project."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = uri[len(prefix):]
    if not path.startswith("/"):
        return prefix + str(project_root() / path)
    return prefix + str(real_path(Path(path)))


def git_commit() -> str:
    """The commit the code came from: a DVC experiment's baseline ($DVC_EXP_BASELINE_REV: a
    queued one runs after HEAD may have moved), else HEAD; "unknown" outside a git checkout
    or without git (as in the image)."""
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=project_root()
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


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
        """Write the buffered metrics (`MlflowClient.log_batch` splits them into MLflow's
        1000-metric requests itself)."""
        if not self.active:
            return
        if self._buffer:
            self.client.log_batch(self.run_id, metrics=self._buffer)
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

    def log_files(self, files: Mapping[Path, Path], folder: str | None = None) -> None:
        """Log temporary files under their final names ({final path: temp path})."""
        if not self.active:
            return
        with tempfile.TemporaryDirectory() as scratch:
            for final, temp in files.items():
                shutil.copyfile(temp, Path(scratch) / Path(final).name)
            self.log_artifacts(Path(scratch), folder)

    def log_figures(self, figures: Mapping, folder: str) -> None:
        """Matplotlib figures as `<folder>/<name>.png`, in one call."""
        if not self.active:
            return
        from clrpipe.plots import png_bytes

        with tempfile.TemporaryDirectory() as scratch:
            for name, figure in figures.items():
                (Path(scratch) / f"{name}.png").write_bytes(png_bytes(figure))
            self.log_artifacts(Path(scratch), folder)

    def log_keras_model(self, model, example, columns: list[str]) -> None:
        """The Keras model as the run's `model`, with its signature and an input example."""
        if not self.active:
            return
        import keras
        from mlflow.models import infer_signature

        signature = infer_signature(example, keras.ops.convert_to_numpy(model(example)))
        quiet = logging.getLogger("mlflow.utils.environment")  # "Failed to resolve installed
        level = quiet.level                                    # pip version": uv venvs lack pip
        quiet.setLevel(logging.ERROR)
        try:
            mlflow.keras.log_model(model, name="model", signature=signature,
                                   pip_requirements=model_requirements())
        finally:
            quiet.setLevel(level)
        self.log_dict({"columns": columns, "data": example.tolist()}, "model/input_example.json")

    def log_datasets(self, frames: Mapping, name: str, target: str) -> None:
        """Each {context: frame} as an MLflow dataset input named `<name>_<context>`.

        The schema comes from the first rows when no value is missing: MLflow tests every
        value in Python to mark columns required (0.4 s for the training split), and with
        nothing missing the first rows give the same schema."""
        if not self.active:
            return
        from mlflow.models import infer_signature

        for context, frame in frames.items():
            with warnings.catch_warnings():  # the integer target's "missing values" hint
                warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")
                dataset = mlflow.data.from_pandas(frame, targets=target, name=f"{name}_{context}")
                if not frame.isna().to_numpy().any():
                    dataset.schema = infer_signature(frame.head(100)).inputs
            mlflow.log_input(dataset, context=context)

    def log_report(self, report: Mapping, name: str) -> None:
        """A stage's report: its numeric entries as metrics (nested keys dotted), all of it as
        the JSON artifact `name`."""
        if not self.active:
            return
        self.log_metrics({k: float(v) for k, v in flatten(report).items()
                          if isinstance(v, int | float) and not isinstance(v, bool)})
        self.log_dict(report, name)

    def log_dict(self, data: Mapping, name: str) -> None:
        if self.active:
            self.client.log_dict(self.run_id, dict(data), name)

    def set_tag(self, key: str, value: str) -> None:
        if self.active:
            self.client.set_tag(self.run_id, key, value)


MODEL_PACKAGES = ("mlflow", "keras", "tensorflow", "numpy")


def model_requirements(*extra: str) -> list[str]:
    """Pinned pip requirements of a logged model: the installed versions of `MODEL_PACKAGES`
    and `extra`. Given explicitly because MLflow's inference re-imports the model in a
    subprocess (14 s per logged model here) and still missed tensorflow, Keras's backend."""
    return [f"{name}=={version(name)}" for name in (*MODEL_PACKAGES, *extra)]


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def stage_run(cfg: DictConfig, stage: str) -> Iterator[StageRun]:
    """Open the child run of `stage` under this pipeline execution's parent run."""
    from clrpipe.pipeline import config
    params = config.section(cfg, "tracking", TrackingParams)
    if not params.enabled:
        yield StageRun(None, None)
        return
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    with _environment_kept("MLFLOW_TRACKING_URI"):  # set_tracking_uri exports it
        uri = store_uri(params.uri)
        parent_id = os.environ.pop("MLFLOW_RUN_ID", None)
        launched = parent_id is not None  # by `mlflow run`, which sets its own run's status
        client, parent_id, run_id = _open_run(uri, params.experiment, stage, parent_id)
        tracked = StageRun(client, run_id)
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.start_run(run_id=run_id)
            flat = flatten(OmegaConf.to_container(cfg, resolve=True))
            client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])
            yield tracked
            tracked.flush()
            with uninterruptible():
                mlflow.end_run("FINISHED")
                if not launched:  # a shared pipeline parent an earlier failure left FAILED/KILLED
                    client.set_terminated(parent_id, "FINISHED")
        except BaseException as err:
            interrupted = isinstance(err, KeyboardInterrupt)
            lost = store.server_lost(uri, timeout=(2.0, 2.0))  # it had its retries already
            status = "KILLED" if interrupted else "FAILED"
            with uninterruptible():
                if lost is None:
                    _quietly(tracked.flush)
                    _quietly(client.set_tag, run_id, ERROR_TAG,
                             "interrupted" if interrupted else first_line(err)[:5000])
                    _quietly(mlflow.end_run, status)
                    _quietly(client.set_terminated, parent_id, status)
                else:  # no more waiting on the server: only drop MLflow's active run, which
                    with store.fail_fast():  # end_run pops before its one quick, failing request
                        _quietly(mlflow.end_run, status)
            if interrupted or isinstance(err, ClrpipeError):
                raise
            if lost is not None:
                # the call's reason, not the probe's
                why = store.reason(err) if store.is_store_error(err) else lost
                raise ClrpipeError(
                    f"tracking server {uri} stopped answering during stage '{stage}' ({why}); "
                    f"its run {run_id} stays RUNNING there until the next stage on this host "
                    "marks it abandoned"
                ) from err
            if store.is_store_error(err):
                raise ClrpipeError(f"tracking store {uri}: {store.reason(err)}") from err
            raise


def _open_run(
    uri: str, experiment: str, stage: str, parent_id: str | None
) -> tuple[MlflowClient, str, str]:
    """Client, parent run id and the new stage run's id; any store failure is one
    ClrpipeError line naming the store."""
    store.check_server(uri)
    try:
        with store.store_lock(uri), _quiet_logger("mlflow.store.db.utils"):
            client = MlflowClient(uri)
            if parent_id:
                experiment_id = client.get_run(parent_id).info.experiment_id
            else:
                experiment_id = store.experiment_id(client, experiment, uri)
                parent_id = _pipeline_parent(client, experiment_id)
            close_abandoned(client, experiment_id)
            tags = {
                MLFLOW_PARENT_RUN_ID: parent_id,
                MLFLOW_RUN_NAME: stage,
                STAGE_TAG: stage,
                "mlflow.source.git.commit": git_commit(),
                "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
                **process_tags(),
            }
            run_id = client.create_run(experiment_id, tags=tags).info.run_id
    except ClrpipeError:
        raise
    except Exception as err:
        if (lost := store.server_lost(uri)) is not None:
            raise ClrpipeError(store.unreachable(uri, lost)) from err
        raise ClrpipeError(f"tracking store {uri}: {store.reason(err)}") from err
    return client, parent_id, run_id


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence a logger that prints a store error with its traceback before raising it: at
    stage start that error becomes the stage's one error line instead."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _quietly(call, *args) -> None:
    """A write on the way out of a failed stage: it must not mask the failure."""
    with contextlib.suppress(Exception):
        call(*args)


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


# --- the parent run ------------------------------------------------------------------------


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

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
import logging
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import DictConfig, OmegaConf

from clrpipe.config import PARAMS_FILE, flatten
from clrpipe.errors import first_line
from clrpipe.outputs import uninterruptible
from clrpipe.params import TrackingParams

for _chatty in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database ..."
    logging.getLogger(_chatty).setLevel(logging.WARNING)

PIPELINE_TAG = "clrpipe.pipeline"
BUFFER_SECONDS = 5.0  # buffered metrics reach the store at most this often (see StageRun)
STAGE_TAG = "clrpipe.stage"
ERROR_TAG = "clrpipe.error"


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
        self.client.log_batch(self.run_id, metrics=self._buffer)  # MLflow splits long lists
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
            mlflow.keras.log_model(model, name="model", signature=signature)
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
            client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])
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
            message = first_line(err)
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


TRIAL_TAG = "clrpipe.trial"


class TrialRuns:
    """Child runs of a stage's run, one per trial (method x seed), written by one process.

    A trial's run is created when its result arrives, with the per-epoch metrics at the times
    the task recorded, the LR series and the final metrics, and ended FINISHED at the trial's
    end time. If the stage then fails, `revoke` marks the finished ones FAILED (KILLED on an
    interrupt) with the reason, so no trial run outlives a failed stage run FINISHED."""

    def __init__(self, tracked: StageRun):
        self.client = tracked.client
        self.parent = tracked.run_id
        self.experiment = (
            self.client.get_run(self.parent).info.experiment_id if tracked.active else None
        )
        self.finished_ids: list[str] = []
        self._outcomes: dict[str, tuple] = {}

    def _create(self, name: str, seed: int, start_ms: int | None = None) -> str:
        tags = {
            MLFLOW_PARENT_RUN_ID: self.parent,
            MLFLOW_RUN_NAME: f"{name} seed {seed}",
            TRIAL_TAG: f"{name}/{seed}",
            "clrpipe.method": name,
            "clrpipe.seed": str(seed),
        }
        return self.client.create_run(self.experiment, start_time=start_ms, tags=tags).info.run_id

    def failed(self, name: str, seed: int, params: Mapping, message: str) -> None:
        """A FAILED run for a trial that raised, with its parameters and the error."""
        if self.client is None:
            return
        run_id = self._create(name, seed)
        self.client.log_batch(run_id, params=_params(params))
        self.client.set_tag(run_id, ERROR_TAG, message[:5000])
        self.client.set_terminated(run_id, "FAILED")

    def finished(self, name: str, seed: int, params: Mapping, out: Mapping) -> None:
        """A complete FINISHED run for a trial that returned `out` (`clrpipe.parallel`'s task
        result)."""
        if self.client is None:
            return
        run_id = self._create(name, seed, out["start_ms"])
        self.client.log_batch(run_id, metrics=_trial_metrics(out), params=_params(params))
        self.client.set_terminated(run_id, "FINISHED", end_time=out["end_ms"])
        self.finished_ids.append(run_id)
        self._outcomes[run_id] = (out["outcome"], out["end_ms"])

    def log_targets(self, target: float) -> None:
        """Add to every finished trial's run when its validation score reached `target`
        (known only once every trial, the reference included, has ended)."""
        for run_id, (outcome, end_ms) in self._outcomes.items():
            metrics = [Metric(k, float(v), end_ms, 0)
                       for k, v in _target_metrics(outcome, target).items()]
            self.client.log_batch(run_id, metrics=metrics)

    def revoke(self, status: str, message: str) -> None:
        """The stage run did not finish: neither do the trials that had."""
        for run_id in self.finished_ids:
            self.client.set_tag(run_id, ERROR_TAG, message[:5000])
            self.client.set_terminated(run_id, status)

    @contextlib.contextmanager
    def revoked_on_failure(self) -> Iterator[TrialRuns]:
        """Revoke the finished trials if the block raises (KILLED on an interrupt)."""
        try:
            yield self
        except KeyboardInterrupt:
            self.revoke("KILLED", "interrupted")
            raise
        except BaseException as err:
            self.revoke("FAILED", f"the stage failed: {first_line(err)}")
            raise


def _params(values: Mapping) -> list[Param]:
    return [Param(k, str(v)) for k, v in flatten(values).items()]


def _trial_metrics(out: Mapping) -> list[Metric]:
    """Final metrics and, for networks, every epoch and LR step."""
    outcome, end_ms = out["outcome"], out["end_ms"]
    final = {
        f"test_{outcome.metric}": outcome.test_score,
        "test_loss": outcome.test_loss,
        "final_loss": outcome.final_loss,
        "train_seconds": sum(outcome.epoch_seconds),  # as in trials.csv and the summary
    }
    if "history" not in out:  # gradient boosting
        final |= {f"val_{outcome.metric}": out["val_score"], "iterations": out["iterations"]}
    metrics = [Metric(k, float(v), end_ms, 0) for k, v in final.items()]
    history = out.get("history")
    if history is not None:
        for step, stamp in enumerate(out["epoch_end_ms"]):
            metrics += [Metric(key, float(values[step]), stamp, step)
                        for key, values in history.epochs.items()]
            metrics.append(Metric("epoch_seconds", history.epoch_seconds[step], stamp, step))
        metrics += [Metric("learning_rate", float(v), end_ms, int(s))
                    for s, v in zip(history.lr_steps, history.lr_values, strict=True)]
    return metrics


def _target_metrics(outcome, target: float) -> dict[str, float]:
    """Whether and when a trial's validation score first reached `target`."""
    from clrpipe.compare import first_reach

    epoch, seconds = first_reach(outcome.val_score, outcome.epoch_seconds, target)
    found = {"target": target, "reached_target": float(epoch is not None)}
    if epoch is not None:
        found["seconds_to_target"] = seconds
        if outcome.epochs:
            found["epochs_to_target"] = epoch
    return found

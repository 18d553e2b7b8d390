"""Child runs of a stage's run, one per trial: `compare`'s and the study's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from mlflow.entities import Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from clrpipe.errors import first_line
from clrpipe.pipeline.config import flatten
from clrpipe.pipeline.tracking.tags import ERROR_TAG, TRIAL_TAG

if TYPE_CHECKING:
    from clrpipe.pipeline.tracking.runs import StageRun

__all__ = ["TrialRuns"]


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
        """A complete FINISHED run for a trial that returned `out` (`comparison.parallel`'s task
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
        """The stage run did not finish: neither do the trials that had. The first write that
        fails stops it (a lost server would otherwise cost its retries per trial); the next
        stage's abandoned-run sweep does not reach trial runs, so the error says so."""
        for run_id in self.finished_ids:
            try:
                self.client.set_tag(run_id, ERROR_TAG, message[:5000])
                self.client.set_terminated(run_id, status)
            except Exception:  # the stage's own failure is what the user must see
                return

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
    from clrpipe.pipeline.comparison.compare import first_reach

    epoch, seconds = first_reach(outcome.val_score, outcome.epoch_seconds, target)
    found = {"target": target, "reached_target": float(epoch is not None)}
    if epoch is not None:
        found["seconds_to_target"] = seconds
        if outcome.epochs:
            found["epochs_to_target"] = epoch
    return found

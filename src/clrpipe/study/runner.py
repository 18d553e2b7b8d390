"""The study's Ray side: a range test with one optimizer and one packed training as task
bodies, and `run_tasks`, which submits them and hands results to the driver as they return.

Each returns plain data for the driver (which alone talks to MLflow, as in `comparison.parallel`).
Inside a task TensorFlow uses one thread, so N tasks share N cores. A packed training whose
summed loss turns non-finite has no model: every seed of it is returned as diverged (test score
NaN) rather than failing the study, since a grid point or a range test's suggestion diverging
is a result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline.comparison.compare import TrialOutcome
from clrpipe.pipeline.comparison.methods import build_optimizer, range_test_task
from clrpipe.pipeline.params import ModelParams, StudyParams
from clrpipe.pipeline.training import loop
from clrpipe.pipeline.training.trial import SplitArrays
from clrpipe.study import packed, regret
from clrpipe.study.core import Job

__all__ = ["run_tasks", "schedule_of", "train_job_task"]


def schedule_of(job: Job, steps_per_epoch: int):
    """The job's learning rate: a float, a triangle of `cycles` full cycles over the run, or a
    one-cycle over the run."""
    from clrpipe import schedules
    total = steps_per_epoch * job.epochs
    if job.schedule == "constant":
        return float(job.learning_rate)
    if job.schedule == "triangular":
        return schedules.CyclicalLearningRate(job.base_lr, job.max_lr,
                                              step_size=max(total / (2 * job.cycles), 1.0))
    return schedules.OneCycleLearningRate(job.max_lr, total_steps=total)


def _now_ms() -> int:
    return int(time.time() * 1000)


def train_job_task(model_params: ModelParams, job: Job, momentum: float,
                   steps_per_execution: int, order_seed: int,
                   split: SplitArrays) -> dict[str, Any]:
    """One packed training of `job`: per seed its outcome, history and times, as
    `tracking.trials.TrialRuns.finished` takes them (or the reason it diverged)."""
    import keras

    loop.limit_threads(1)
    keras.backend.clear_session()
    output, score = split.output, split.output.score
    steps = math.ceil(len(split.x) / job.batch_size)
    schedule = schedule_of(job, steps)
    from clrpipe.optimizers import evaluation_weights

    started_ms = _now_ms()

    def make(model):
        return build_optimizer(job.optimizer, schedule, model, momentum=momentum,
                               group_of=packed.group_of(model), **job.options)

    try:
        result = packed.train_packed(
            model_params, job.seeds, make, split.x, split.y, epochs=job.epochs,
            batch_size=job.batch_size, order_seed=order_seed,
            validation=(split.x_val, split.y_val), test=(split.x_test, split.y_test),
            output=output, steps_per_execution=steps_per_execution, evaluation=evaluation_weights,
        )
    except ClrpipeError as err:
        if "diverged" not in str(err):
            raise
        nan = math.nan
        outcomes = [TrialOutcome(job.method, s, nan, nan, nan, (nan,), (0.0,), metric=score,
                                 test_rows=len(split.y_test)) for s in job.seeds]
        return {"job": job, "diverged": str(err), "outcomes": outcomes, "start_ms": started_ms,
                "end_ms": _now_ms(), "seconds": 0.0}
    copies = len(job.seeds)
    trials = []
    for seed, history, test in zip(job.seeds, result.per_seed, result.test, strict=True):
        history.epoch_seconds = [s / copies for s in history.epoch_seconds]
        outcome = TrialOutcome(
            job.method, seed, test[score], test["loss"], history.epochs["loss"][-1],
            tuple(history.epochs[f"val_{score}"]), tuple(history.epoch_seconds), metric=score,
            test_rows=len(split.y_test),
        )
        trials.append({"outcome": outcome, "history": history, "start_ms": started_ms,
                       "end_ms": result.epoch_end_ms[-1], "epoch_end_ms": result.epoch_end_ms,
                       "test": test})
    return {"job": job, "trials": trials, "outcomes": [t["outcome"] for t in trials],
            "start_ms": started_ms, "end_ms": _now_ms(), "seconds": result.seconds}


def run_tasks(ray, jobs: Sequence[Job], splits: Mapping[str, SplitArrays],
              model_params: ModelParams, study: StudyParams,
              on_finished: Callable[[Job, dict], None], on_failed: Callable[[Job, str], None]):
    """Submit the range tests and the trainings that need none, as Ray tasks; a returned range
    test releases the trainings waiting for it (rates filled by `study.fill_rates`). Each
    training result goes to `on_finished`, a diverged one to `on_failed`, as it returns. A
    task that raises cancels the rest and raises one line naming it. Returns the range tests
    {(dataset, optimizer): result} and the trainings {(dataset, method): result}."""
    from clrpipe.pipeline.comparison import parallel
    from clrpipe.study.core import fill_rates, range_tests_needed

    remote_rt = ray.remote(num_cpus=1, max_retries=parallel.MAX_RETRIES)(range_test_task)
    remote_job = ray.remote(num_cpus=1, max_retries=parallel.MAX_RETRIES)(train_job_task)
    refs = {name: ray.put(split) for name, split in splits.items()}
    pending: dict = {}

    def submit(job: Job) -> None:
        ref = remote_job.remote(model_params, job, study.momentum, study.steps_per_execution,
                                study.order_seed, refs[job.dataset])
        pending[ref] = ("job", job)

    for dataset, optimizer in range_tests_needed(jobs):
        options = next(j.options for j in jobs if j.optimizer == optimizer and
                       j.needs_range_test)
        ref = remote_rt.remote(model_params, optimizer, study.range_test[optimizer],
                               study.datasets[dataset].batch_size, study.first_seed,
                               study.momentum, options, refs[dataset])
        pending[ref] = ("range_test", (dataset, optimizer))
    for job in jobs:
        if not job.needs_range_test:
            submit(job)
    tests, results = {}, {}
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        kind, what = pending.pop(ref)
        try:
            out = ray.get(ref)
        except Exception as err:
            for other in pending:
                ray.cancel(other, force=True)
            reason = first_line(getattr(err, "cause", None) or err)
            if kind == "job":
                on_failed(what, reason)
                raise ClrpipeError(f"study: {what.dataset} {what.method} failed: {reason}") \
                    from None
            raise ClrpipeError(f"study: range test of {what[1]} on {what[0]} failed: "
                               f"{reason}") from None
        if kind == "range_test":
            out["suggestions"] = regret.sweep_suggestions(out["curves"],
                                                          study.range_test[what[1]])
            tests[what] = out
            for job in jobs:
                if job.needs_range_test and (job.dataset, job.optimizer) == what:
                    submit(fill_rates(job, (out["base_lr"], out["max_lr"])))
            continue
        job = out["job"]
        results[job.key] = out
        if "diverged" in out:
            on_failed(job, out["diverged"])
        else:
            on_finished(job, out)
    return tests, results

"""Trials as Ray tasks: the comparison's methods x seeds, one CPU each, on a local or remote Ray.

Each trial takes one CPU; TensorFlow inside it uses one intra-op and one inter-op thread so that
N parallel tasks do not oversubscribe N cores. The split goes once into Ray's object store. With
`compare.ray.address` null an embedded local Ray is started (`address="local"`, never attaching
to somebody else's instance) with all cores, or `compare.ray.num_cpus`; with an address, the
trials run on that cluster (its nodes need this project's environment). A task whose node dies
is retried (`MAX_RETRIES`), so each trial's result reaches the driver once.

Tasks do not talk to MLflow: `run_trials` hands each result to the driver's `on_result` as soon
as its task returns (one writer: an SQLite store never sees concurrent writers, and trials on a
cluster need no access to the store).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.optimizers import evaluation_weights
from clrpipe.pipeline.comparison.compare import HGB, PlannedMethod, TrialOutcome
from clrpipe.pipeline.comparison.methods import build_optimizer, range_test_task
from clrpipe.pipeline.params import (
    PARAMS_FILE,
    CompareParams,
    HgbParams,
    ModelParams,
    RayParams,
    TrainCommon,
)
from clrpipe.pipeline.training import loop
from clrpipe.pipeline.training.trial import SplitArrays, train_trial

__all__ = [
    "MAX_RETRIES", "TrialFailed", "hgb_trial", "network_trial", "run_sweeps", "run_trials",
    "start_ray",
]

MAX_RETRIES = 3
"""How often Ray reruns a trial whose worker or node died."""

_worker_ready = False


class TrialFailed(ClrpipeError):
    """One trial raised; the other tasks were cancelled."""

    def __init__(self, name: str, seed: int, message: str):
        super().__init__(f"compare: trial {name} seed {seed} failed: {message}")
        self.name, self.seed, self.reason = name, seed, message


def _now_ms() -> int:
    return int(time.time() * 1000)


def _prepare_worker(model_params: ModelParams, train: TrainCommon, split: SplitArrays) -> None:
    """Once per worker process: one TensorFlow thread (intra- and inter-op), then a throwaway
    one-epoch fit on a few rows, so the runtime's one-time start-up is not charged to whichever
    trial happens to run first in this process."""
    global _worker_ready
    if _worker_ready:
        return
    from clrpipe.pipeline.params import ConstantSchedule

    loop.limit_threads(1)  # False if the runtime had started already: its pools stay
    rows = min(len(split.x), 2 * train.steps_per_execution * 32)
    train_trial(model_params, train, ConstantSchedule(learning_rate=0.01), epochs=1,
                batch_size=32, seed=0, split=split.head(rows))
    _worker_ready = True


def network_trial(model_params: ModelParams, train: TrainCommon, method: PlannedMethod,
                  name: str, seed: int, split: SplitArrays) -> dict[str, Any]:
    """Ray task body: one network training (SGD, or `method.optimizer` built by
    `methods.build_optimizer`); returns plain data for the driver to log."""
    import keras

    _prepare_worker(model_params, train, split)
    keras.backend.clear_session()
    epoch_end_ms: list[int] = []
    started_ms = _now_ms()

    def make_optimizer(schedule, model):
        return build_optimizer(method.optimizer, schedule, model, momentum=train.momentum,
                               **method.options)

    result = train_trial(
        model_params, train, method.schedule, epochs=method.epochs,
        batch_size=method.batch_size, seed=seed, split=split,
        on_epoch=lambda *_: epoch_end_ms.append(_now_ms()),
        make_optimizer=None if method.optimizer == "sgd" else make_optimizer,
    )
    history, score = result.history, split.output.score
    with evaluation_weights(result.model, result.model.optimizer):  # what it was scored with
        weights = result.model.get_weights()
    outcome = TrialOutcome(
        name, seed, result.test[score], result.test["loss"], history.epochs["loss"][-1],
        tuple(history.epochs[f"val_{score}"]), tuple(history.epoch_seconds), metric=score,
        test_rows=len(split.y_test),
    )
    return {"outcome": outcome, "history": history, "start_ms": started_ms,
            "end_ms": epoch_end_ms[-1], "epoch_end_ms": epoch_end_ms, "weights": weights}


def hgb_trial(hgb: HgbParams, seed: int, split: SplitArrays) -> dict[str, Any]:
    """Ray task body: gradient boosting (a classifier or a regressor, as the task is) on the
    same fit rows, scored on the same slices: accuracy and log loss, or R² and squared error
    (in the standardized units the network's loss uses)."""
    from sklearn import ensemble
    from sklearn.metrics import log_loss, mean_squared_error

    output = split.output
    kind = (ensemble.HistGradientBoostingClassifier if output.classification
            else ensemble.HistGradientBoostingRegressor)
    started_ms = _now_ms()
    model = kind(learning_rate=hgb.learning_rate, max_iter=hgb.max_iter,
                 max_leaf_nodes=hgb.max_leaf_nodes, random_state=seed)
    started = time.perf_counter()
    model.fit(split.x, split.y)
    seconds = time.perf_counter() - started

    def loss(x, y) -> float:
        if not output.classification:
            return float(mean_squared_error(y, model.predict(x)))
        probabilities = model.predict_proba(x)
        if output.task == "binary":
            return float(log_loss(y, probabilities[:, 1]))
        return float(log_loss(y, probabilities, labels=list(range(output.units))))

    val_score = float(model.score(split.x_val, split.y_val))
    outcome = TrialOutcome(
        HGB, seed, float(model.score(split.x_test, split.y_test)), loss(split.x_test, split.y_test),
        loss(split.x, split.y), (val_score,), (seconds,), epochs=False, metric=output.score,
        test_rows=len(split.y_test),
    )
    return {"outcome": outcome, "val_score": val_score,
            "iterations": int(model.n_iter_), "start_ms": started_ms, "end_ms": _now_ms()}


def start_ray(ray_params: RayParams):
    """Connect to `address`, or start an embedded local Ray; returns the module."""
    # Under `uv run`, Ray would start each worker with `uv run` inside a packaged copy of the
    # working directory, which holds no project, so workers lacked `ray` and never registered
    # (seen on a fresh clone). Workers use this interpreter instead. Read when Ray is imported.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if ray_params.address is None:  # token auth, as Ray's default, minus its warning about it
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    if ray_params.address is None:
        kwargs.update(address="local", num_cpus=ray_params.num_cpus)
    else:
        kwargs.update(address=ray_params.address)
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as err:
        where = ray_params.address or "a local instance"
        raise ClrpipeError(f"{PARAMS_FILE}: compare.ray.address: cannot start or reach Ray at "
                           f"{where} ({first_line(err)})") from err
    finally:
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)  # ray.init replaces the CLI's handler
    return ray


def run_trials(
    ray,
    methods: Mapping[str, PlannedMethod],
    hgb: HgbParams | None,
    seeds: Sequence[int],
    model_params: ModelParams,
    train: TrainCommon,
    split: SplitArrays,
    on_result: Callable[[str, int, dict], None],
) -> list[TrialOutcome]:
    """Submit every trial, hand each result to `on_result` as it returns, and return the
    outcomes in method-then-seed order. On a failure the other tasks are cancelled and
    `TrialFailed` is raised."""
    network = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(network_trial)
    boosting = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(hgb_trial)
    split_ref = ray.put(split)
    pending = {}
    for seed in seeds:
        for name, method in methods.items():
            ref = network.remote(model_params, train, method, name, seed, split_ref)
            pending[ref] = (name, seed)
        if hgb is not None:
            pending[boosting.remote(hgb, seed, split_ref)] = (HGB, seed)
    outcomes = []
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        name, seed = pending.pop(ref)
        try:
            out = ray.get(ref)
        except Exception as err:
            for other in pending:
                ray.cancel(other, force=True)
            raise TrialFailed(name, seed, first_line(getattr(err, "cause", None) or err)) from None
        outcomes.append(out["outcome"])
        on_result(name, seed, out)
    order = {name: i for i, name in enumerate([*methods, HGB])}
    return sorted(outcomes, key=lambda o: (order[o.method], o.seed))


def run_sweeps(ray, compare: CompareParams, model_params: ModelParams, train: TrainCommon,
               split: SplitArrays) -> dict[str, dict]:
    """The range test of every optimizer a chosen method takes a null rate from
    (`compare.sweeps_needed`), each a Ray task on the first seed at the batch size of the first
    method that uses it: per optimizer its bounds, steps and seconds."""
    from clrpipe.pipeline.comparison.compare import sweeps_needed

    needed = sweeps_needed(compare)
    if not needed:
        return {}
    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(range_test_task)
    split_ref = ray.put(split)
    refs = {}
    for optimizer in needed:
        first = next(m for m in compare.methods.values()
                     if m.optimizer == optimizer and m.needs_sweep())
        refs[optimizer] = task.remote(model_params, optimizer, compare.range_test[optimizer],
                                      first.batch_size, compare.first_seed, train.momentum,
                                      dict(first.options), split_ref)
    found = {}
    for optimizer, ref in refs.items():
        try:
            out = ray.get(ref)
        except Exception as err:
            raise ClrpipeError(f"compare: the range test of {optimizer} failed: "
                               f"{first_line(getattr(err, 'cause', None) or err)}") from None
        found[optimizer] = {k: v for k, v in out.items() if k not in ("optimizer", "curves")}
    return found


"""`compare` stage: every method of `compare:` x seeds, and gradient boosting, trained on Ray.

Each trial (one method, one seed) is a Ray task taking one CPU; TensorFlow inside it uses one
intra-op and one inter-op thread so that N parallel tasks do not oversubscribe N cores. The split
goes once into Ray's object store. With `compare.ray.address` null an embedded local Ray is
started (`address="local"`, never attaching to somebody else's instance) with all cores, or
`compare.ray.num_cpus`; with an address, the trials run on that cluster (its nodes need this
project's environment).

Tracking: trials do not talk to MLflow; the driver logs each trial as a child run of the compare
stage's run as soon as its task returns, with the per-epoch metrics (timestamps taken in the
task), the LR series and the test metrics. One writer means an SQLite store never sees
concurrent writers ("database is locked"), and trials on a cluster need no access to the store
(a file path on the driver's machine, or a server). The price: a trial's curves appear when
it ends, not epoch by epoch (a trial takes seconds). A trial that fails gets a FAILED child run
with its error, the remaining tasks are cancelled and the compare run ends FAILED, with no
output files written; trials that had already ended keep their complete child runs, marked
FAILED (KILLED on an interrupt) with the reason as a tag, so no run outlives a failure FINISHED.

Outputs, all or none: `metrics/compare.json` (per-method summary), `reports/compare.md` (the
table), `plots/compare/trials.csv` (one row per trial) and `plots/compare/{test_accuracy,
val_accuracy,lr}.png`, also logged as artifacts of the compare run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

import click
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import DictConfig
from pydantic import Field

from clrpipe import compare, config, schedules, tracking, training
from clrpipe.errors import ClrpipeError
from clrpipe.model import ModelParams
from clrpipe.outputs import atomic_outputs
from clrpipe.stages.split import SplitParams
from clrpipe.stages.train import (
    SplitArrays,
    TrainParams,
    load_split,
    range_test_bounds,
    split_arrays,
    train_trial,
)

SECTION = "compare"
HGB = "hgb"
METRICS = Path("metrics/compare.json")
TABLE = Path("reports/compare.md")
TRIALS_CSV = Path("plots/compare/trials.csv")
FIGURES = ("test_accuracy", "val_accuracy", "lr")
TRIAL_TAG = "clrpipe.trial"


class MethodParams(config.Section):
    """One network method: a `schedule:`-style mapping, its batch size and optional epochs."""

    schedule: dict[str, Any]
    batch_size: int = Field(gt=0)
    epochs: int | None = Field(default=None, gt=0)


class HgbParams(config.Section):
    """`compare.hgb:` HistGradientBoostingClassifier settings."""

    learning_rate: float = Field(default=0.1, gt=0)
    max_iter: int = Field(default=100, gt=0)
    max_leaf_nodes: int = Field(default=31, gt=1)


class RayParams(config.Section):
    """`compare.ray:` where the trials run."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, gt=0)


class CompareParams(config.Section):
    """`compare:` (see conf/compare/default.yaml)."""

    seeds: int = Field(gt=0)
    first_seed: int = 0
    epochs: int = Field(gt=0)
    target_accuracy: float = Field(gt=0, lt=1)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    suggested_lr: Literal["geometric_mean", "arithmetic_mean"] = "geometric_mean"
    select: list[str] | None = None
    methods: dict[str, MethodParams]
    hgb: HgbParams | None = None
    ray: RayParams = RayParams()


def _fail(key: str, message: str) -> ClrpipeError:
    return ClrpipeError(f"{config.PARAMS_FILE}: {SECTION}.{key}: {message}")


def plan(params: CompareParams, bounds, train_rows: int) -> dict[str, dict]:
    """The network methods to run, name -> {schedule (rates filled), batch_size, epochs},
    each schedule built once here so a bad key fails before any training or run starts."""
    known = [*params.methods, *([HGB] if params.hgb is not None else [])]
    if HGB in params.methods:
        raise _fail(f"methods.{HGB}", "the name is reserved for the gradient-boosting reference")
    chosen = known if params.select is None else params.select
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        got = unknown[0] if unknown else "an empty list"
        raise _fail("select", f"expected names from {', '.join(known)}, got {got!r}")
    planned = {}
    for name in (n for n in params.methods if n in chosen):
        method = params.methods[name]
        where = f"{config.PARAMS_FILE}: {SECTION}.methods.{name}.schedule"
        section = compare.fill_rates(method.schedule, bounds, params.suggested_lr, where)
        epochs = method.epochs or params.epochs
        try:
            backend = schedules.read_config(section)["backend"]
            if backend != "keras":
                raise ClrpipeError(f"backend: expected 'keras' in a comparison, got {backend!r}")
            schedules.build_schedule(section, train_rows, method.batch_size, epochs=epochs)
        except ClrpipeError as err:
            raise ClrpipeError(f"{where}.{str(err).removeprefix('schedule.')}") from None
        planned[name] = {"schedule": section, "batch_size": method.batch_size, "epochs": epochs}
    return planned


_worker_ready = False


def _prepare_worker(model_params, train_params, split: SplitArrays) -> None:
    """Once per worker process: one TensorFlow thread (intra- and inter-op), then a throwaway
    one-epoch fit on a few rows, so the runtime's one-time start-up is not charged to whichever
    trial happens to run first in this process."""
    global _worker_ready
    if _worker_ready:
        return
    training.limit_threads(1)  # False if the runtime had started already: its pools stay
    rows = min(len(split.x), 2 * train_params.steps_per_execution * 32)
    tiny = SplitArrays(split.x[:rows], split.y[:rows], split.x_val[:rows], split.y_val[:rows],
                       split.x_test[:rows], split.y_test[:rows])
    train_trial(model_params, train_params, {"policy": "constant", "learning_rate": 0.01},
                epochs=1, batch_size=32, seed=0, split=tiny)
    _worker_ready = True


def network_trial(model_params, train_params, method: dict, seed: int, split: SplitArrays):
    """Ray task body: one network training; returns plain data for the driver to log."""
    import keras

    _prepare_worker(model_params, train_params, split)
    keras.backend.clear_session()
    epoch_end_ms: list[int] = []
    started_ms = _now_ms()
    result = train_trial(
        model_params, train_params, method["schedule"], epochs=method["epochs"],
        batch_size=method["batch_size"], seed=seed, split=split,
        on_epoch=lambda *_: epoch_end_ms.append(_now_ms()),
    )
    return {
        "history": result.history,
        "test": result.test,
        "seconds": result.seconds,
        "start_ms": started_ms,
        "epoch_end_ms": epoch_end_ms,
    }


def hgb_trial(hgb: HgbParams, seed: int, split: SplitArrays):
    """Ray task body: gradient boosting on the same fit rows, scored on the same slices."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import log_loss

    started_ms = _now_ms()
    model = HistGradientBoostingClassifier(
        learning_rate=hgb.learning_rate, max_iter=hgb.max_iter,
        max_leaf_nodes=hgb.max_leaf_nodes, random_state=seed,
    )
    started = time.perf_counter()
    model.fit(split.x, split.y)
    seconds = time.perf_counter() - started
    return {
        "test": {
            "accuracy": float(model.score(split.x_test, split.y_test)),
            "loss": float(log_loss(split.y_test, model.predict_proba(split.x_test)[:, 1])),
        },
        "val_accuracy": float(model.score(split.x_val, split.y_val)),
        "final_loss": float(log_loss(split.y, model.predict_proba(split.x)[:, 1])),
        "iterations": int(model.n_iter_),
        "seconds": seconds,
        "start_ms": started_ms,
        "end_ms": _now_ms(),
    }


def _now_ms() -> int:
    return int(time.time() * 1000)


def outcome_of(name: str, seed: int, out: dict) -> compare.TrialOutcome:
    """The summary core's view of a task's result."""
    if name == HGB:
        return compare.TrialOutcome(
            name, seed, out["test"]["accuracy"], out["test"]["loss"], out["final_loss"],
            (out["val_accuracy"],), (out["seconds"],), epochs=False,
        )
    history = out["history"]
    return compare.TrialOutcome(
        name, seed, out["test"]["accuracy"], out["test"]["loss"], history.epochs["loss"][-1],
        tuple(history.epochs["val_accuracy"]), tuple(history.epoch_seconds),
    )


def _start_ray(params: RayParams):
    """Connect to `address`, or start an embedded local Ray; returns the module."""
    # Under `uv run`, Ray would start each worker with `uv run` inside a packaged copy of the
    # working directory, which holds no project, so workers lacked `ray` and never registered
    # (seen on a fresh clone). Workers use this interpreter instead. Read when Ray is imported.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    if params.address is None:
        kwargs.update(address="local", num_cpus=params.num_cpus)
    else:
        kwargs.update(address=params.address)
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as err:
        where = params.address or "a local instance"
        raise _fail("ray.address", f"cannot start or reach Ray at {where} ({err})") from err
    finally:
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)  # ray.init replaces the CLI's handler
    return ray


def run(cfg: DictConfig) -> dict:
    """Train every method x seed on Ray, log them, and write the comparison."""
    params = config.section(cfg, SECTION, CompareParams)
    train_params = config.section(cfg, "train", TrainParams)
    model_params = config.section(cfg, "model", ModelParams)
    split_dir = config.section(cfg, "split", SplitParams).dir
    split = split_arrays(*load_split(split_dir), train_params)
    methods = plan(params, range_test_bounds(), len(split.x))
    use_hgb = params.hgb is not None and HGB in (params.select or [HGB])
    seeds = list(range(params.first_seed, params.first_seed + params.seeds))

    started = time.perf_counter()
    ray = _start_ray(params.ray)
    try:
        with tracking.stage_run(cfg, SECTION) as tracked:
            outcomes, lr_curves = _run_trials(
                ray, tracked, methods, params.hgb if use_hgb else None, seeds,
                model_params, train_params, split, params.target_accuracy,
            )
            summaries = compare.summarize(outcomes, params.target_accuracy, params.confidence)
            report = _report(params, methods, summaries, seeds, time.perf_counter() - started)
            _write_outputs(tracked, params, summaries, outcomes, lr_curves, report)
    finally:
        ray.shutdown()
    click.echo(
        f"compare: {len(outcomes)} trials ({len(summaries)} methods x {len(seeds)} seeds) in "
        f"{report['seconds']:.0f} s -> {METRICS}, {TABLE}\n" + report["table"]
    )
    return report


def _run_trials(ray, tracked, methods, hgb, seeds, model_params, train_params, split, target):
    """Submit every trial, log each as it returns; on a failure cancel the rest and raise."""
    network = ray.remote(num_cpus=1)(network_trial)
    boosting = ray.remote(num_cpus=1)(hgb_trial)
    split_ref = ray.put(split)
    pending = {}
    for seed in seeds:
        for name, method in methods.items():
            ref = network.remote(model_params, train_params, method, seed, split_ref)
            pending[ref] = (name, seed)
        if hgb is not None:
            pending[boosting.remote(hgb, seed, split_ref)] = (HGB, seed)
    children = _Children(tracked)
    try:
        return _collect(pending, children, methods, hgb, target)
    except KeyboardInterrupt:
        children.revoke("KILLED", "interrupted")
        raise
    except BaseException as err:
        children.revoke("FAILED", f"the compare run failed: {_first_line(err)}")
        raise


def _collect(pending, children, methods, hgb, target):
    """Wait for the trials one by one, logging each as it ends; cancel the rest on a failure."""
    import ray

    outcomes, lr_curves = [], {}
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        name, seed = pending.pop(ref)
        try:
            out = ray.get(ref)
        except Exception as err:
            for other in pending:
                ray.cancel(other, force=True)
            cause = getattr(err, "cause", None) or err
            message = _first_line(cause)
            children.failed(name, seed, methods.get(name), message)
            raise ClrpipeError(f"compare: trial {name} seed {seed} failed: {message}") from None
        outcome = outcome_of(name, seed, out)
        outcomes.append(outcome)
        if name != HGB and name not in lr_curves:
            lr_curves[name] = (out["history"].lr_steps, out["history"].lr_values)
        children.finished(name, seed, methods.get(name), hgb, out, outcome, target)
    order = {name: i for i, name in enumerate([*methods, HGB])}
    outcomes.sort(key=lambda o: (order[o.method], o.seed))
    return outcomes, {name: lr_curves[name] for name in methods}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class _Children:
    """Child runs of the compare run, one per trial, written by the driver only."""

    def __init__(self, tracked: tracking.StageRun):
        self.client = tracked.client
        self.parent = tracked.run_id
        self.experiment = (
            self.client.get_run(self.parent).info.experiment_id if tracked.active else None
        )
        self.finished_ids: list[str] = []

    def revoke(self, status: str, message: str) -> None:
        """The compare run did not finish: neither do the trials that had (no FINISHED child
        under a FAILED/KILLED compare run)."""
        for run_id in self.finished_ids:
            self.client.set_tag(run_id, tracking.ERROR_TAG, message[:5000])
            self.client.set_terminated(run_id, status)

    def _create(self, name: str, seed: int, start_ms: int | None = None) -> str:
        tags = {
            MLFLOW_PARENT_RUN_ID: self.parent,
            MLFLOW_RUN_NAME: f"{name} seed {seed}",
            TRIAL_TAG: f"{name}/{seed}",
            "clrpipe.method": name,
            "clrpipe.seed": str(seed),
        }
        return self.client.create_run(self.experiment, start_time=start_ms, tags=tags).info.run_id

    def _params(self, name: str, seed: int, method: dict | None, hgb) -> list[Param]:
        values: dict[str, Any] = {"method": name, "seed": seed}
        if method is not None:
            values |= {"batch_size": method["batch_size"], "epochs": method["epochs"]}
            values |= {f"schedule.{k}": v for k, v in method["schedule"].items()}
        elif hgb is not None:
            values |= {f"hgb.{k}": v for k, v in hgb.model_dump().items()}
        return [Param(k, str(v)) for k, v in values.items()]

    def failed(self, name: str, seed: int, method: dict | None, message: str) -> None:
        if self.client is None:
            return
        run_id = self._create(name, seed)
        self.client.log_batch(run_id, params=self._params(name, seed, method, None))
        self.client.set_tag(run_id, tracking.ERROR_TAG, message[:5000])
        self.client.set_terminated(run_id, "FAILED")

    def finished(self, name, seed, method, hgb, out, outcome, target) -> None:
        if self.client is None:
            return
        run_id = self._create(name, seed, out["start_ms"])
        end_ms = out.get("end_ms") or out["epoch_end_ms"][-1]
        epoch, seconds = compare.first_reach(outcome.val_accuracy, outcome.epoch_seconds, target)
        final = {
            "test_accuracy": outcome.test_accuracy,
            "test_loss": outcome.test_loss,
            "final_loss": outcome.final_loss,
            "train_seconds": sum(outcome.epoch_seconds),  # as in trials.csv and the summary
            "reached_target": float(epoch is not None),
        }
        if epoch is not None:
            final |= {"seconds_to_target": seconds}
            if outcome.epochs:
                final |= {"epochs_to_target": epoch}
        metrics = [Metric(k, float(v), end_ms, 0) for k, v in final.items()]
        if name == HGB:
            metrics += [Metric("val_accuracy", out["val_accuracy"], end_ms, 0),
                        Metric("iterations", out["iterations"], end_ms, 0)]
        else:
            history = out["history"]
            for step, stamp in enumerate(out["epoch_end_ms"]):
                metrics += [
                    Metric(key, float(values[step]), stamp, step)
                    for key, values in history.epochs.items()
                ]
                metrics.append(Metric("epoch_seconds", history.epoch_seconds[step], stamp, step))
            metrics += [
                Metric("learning_rate", float(v), end_ms, int(s))
                for s, v in zip(history.lr_steps, history.lr_values, strict=True)
            ]
        self.client.log_batch(run_id, params=self._params(name, seed, method, hgb))
        tracking.log_metric_batches(self.client, run_id, metrics)
        self.client.set_terminated(run_id, "FINISHED", end_time=end_ms)
        self.finished_ids.append(run_id)


def _report(params, methods, summaries, seeds, seconds) -> dict:
    """compare.json's content (with the table): summaries, resolved methods, best vs HGB."""
    best = compare.best_network(summaries)
    report: dict[str, Any] = {
        "target_accuracy": params.target_accuracy,
        "confidence": params.confidence,
        "seeds": len(seeds),
        "first_seed": seeds[0],
        "methods": {name: s.as_dict() for name, s in summaries.items()},
        "learning_rates": {
            name: {k: v for k, v in m["schedule"].items() if "learning_rate" in k}
            for name, m in methods.items()
        },
        "best_network": best.method if best else None,
        "seconds": seconds,
    }
    if best is not None and HGB in summaries:
        diff = compare.difference_interval(
            best.per_seed_accuracy, summaries[HGB].per_seed_accuracy, params.confidence
        )
        report["best_minus_hgb"] = {"mean": diff.mean, "ci_low": diff.low, "ci_high": diff.high}
    report["table"] = compare.markdown_table(summaries, params.target_accuracy, params.confidence)
    return report


def _markdown(report: dict) -> str:
    """The table plus one line on the best network against gradient boosting."""
    lines = [
        f"# Comparison over {report['seeds']} seeds (first seed {report['first_seed']})", "",
        report["table"],
    ]
    best = report["best_network"]
    if "best_minus_hgb" in report:
        d = report["best_minus_hgb"]
        interval = (
            "" if d["ci_low"] is None
            else f" ({100 * report['confidence']:g}% Welch interval "
                 f"[{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}])"
        )
        lines.append(
            f"Best network: {best}, {100 * d['mean']:+.2f} points of test accuracy against "
            f"gradient boosting{interval}."
        )
    elif best is not None:
        lines.append(f"Best network: {best}.")
    rates = ", ".join(
        f"{name} " + "/".join(f"{v:.3g}" for v in lrs.values())
        for name, lrs in report["learning_rates"].items()
    )
    lines += ["", f"Learning rates used: {rates}.", ""]
    return "\n".join(lines)


def _write_outputs(tracked, params, summaries, outcomes, lr_curves, report) -> None:
    figures = _figures(summaries, outcomes, lr_curves, params.target_accuracy)
    pngs = [Path("plots/compare") / f"{name}.png" for name in FIGURES]
    trials = pd.DataFrame(
        {
            "method": o.method,
            "seed": o.seed,
            "test_accuracy": o.test_accuracy,
            "test_loss": o.test_loss,
            "final_loss": o.final_loss,
            "final_val_accuracy": o.val_accuracy[-1],
            "train_seconds": sum(o.epoch_seconds),
        }
        for o in outcomes
    )
    metrics = {k: v for k, v in report.items() if k != "table"}
    flat = {
        f"{name}.{key}": value
        for name, summary in metrics["methods"].items()
        for key, value in summary.items()
        if value is not None and not (isinstance(value, float) and math.isnan(value))
    }
    tracked.log_metrics(flat)
    with atomic_outputs(METRICS, TABLE, TRIALS_CSV, *pngs) as temps:
        metrics_tmp, table_tmp, trials_tmp, *png_tmps = temps
        metrics_tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        table_tmp.write_text(_markdown(report))
        trials.to_csv(trials_tmp, index=False)
        for name, tmp in zip(FIGURES, png_tmps, strict=True):
            figures[name].savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        with tempfile.TemporaryDirectory() as folder:
            for final, tmp in [(METRICS, metrics_tmp), (TABLE, table_tmp),
                               (TRIALS_CSV, trials_tmp), *zip(pngs, png_tmps, strict=True)]:
                named = Path(folder) / final.name
                named.write_bytes(tmp.read_bytes())
                tracked.log_artifact(named, "compare")


def _figures(summaries, outcomes, lr_curves, target) -> dict:
    """Test accuracy per method with its interval and seeds; validation accuracy per epoch
    (mean line, min-max band over seeds; gradient boosting as a level); LR per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(summaries)
    acc, ax = plt.subplots(figsize=(8, 3.6))
    for i, name in enumerate(names):
        s = summaries[name]
        mean = 100 * s.test_accuracy.mean
        err = None if s.test_accuracy.low is None else [[mean - 100 * s.test_accuracy.low],
                                                        [100 * s.test_accuracy.high - mean]]
        ax.errorbar([i], [mean], yerr=err, fmt="o", capsize=6, color=f"C{i}")
        ax.scatter([i + 0.15] * len(s.per_seed_accuracy),
                   [100 * a for a in s.per_seed_accuracy], s=10, color=f"C{i}", alpha=0.6)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set(ylabel="test accuracy %", title="test accuracy: mean, t-interval, seeds")
    ax.grid(alpha=0.3, axis="y")

    val, ax = plt.subplots(figsize=(8, 4))
    for i, name in enumerate(names):
        curves = [o.val_accuracy for o in outcomes if o.method == name]
        if not summaries[name].iterative:
            ax.axhline(100 * float(np.mean(curves)), color=f"C{i}", ls=":", label=name)
            continue
        length = min(len(c) for c in curves)
        grid = 100 * np.array([c[:length] for c in curves])
        epochs = np.arange(1, length + 1)
        ax.plot(epochs, grid.mean(axis=0), color=f"C{i}", label=name)
        ax.fill_between(epochs, grid.min(axis=0), grid.max(axis=0), color=f"C{i}", alpha=0.2)
    ax.axhline(100 * target, color="grey", ls="--", lw=0.8, label="target")
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 100 * target - 3), high)  # zoom on the target; early epochs run off
    ax.set(xlabel="epoch", ylabel="validation accuracy %",
           title="validation accuracy: mean over seeds, min-max band")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    rows = max(len(lr_curves), 1)
    lr, axes = plt.subplots(rows, 1, figsize=(8, 1.8 * rows), squeeze=False)
    for i, (name, (steps, values)) in enumerate(lr_curves.items()):
        ax = axes[i, 0]
        ax.plot(steps, values, color=f"C{names.index(name)}")
        ax.set(ylabel="LR", title=name)
        ax.grid(alpha=0.3)
    if not lr_curves:
        axes[0, 0].text(0.5, 0.5, "no network method", ha="center", transform=axes[0, 0].transAxes)
    axes[-1, 0].set_xlabel("optimizer step (learning rate read after each compiled call)")
    lr.tight_layout()
    return {"test_accuracy": acc, "val_accuracy": val, "lr": lr}

"""`compare` stage: every method of `compare:` x seeds, and gradient boosting, trained on Ray.

Trials run as Ray tasks (`comparison.parallel`); the driver logs each as a child run of this
stage's MLflow run as its task returns (`runs.TrialRuns`). A failed trial gets a FAILED
child run, the rest are cancelled, the stage run ends FAILED, trials that had finished are
marked FAILED too, and no output file is written. Outputs, all or none: `metrics/compare.json`
(per-method summary), `reports/compare.md`, `plots/compare/trials.csv` (one row per trial) and
`plots/compare/{test_accuracy,val_accuracy,lr}.png`, also artifacts of the stage's run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
import pandas as pd
from omegaconf import DictConfig

from clrpipe import plots
from clrpipe.pipeline import config
from clrpipe.pipeline.comparison import compare, parallel
from clrpipe.pipeline.comparison.compare import HGB
from clrpipe.pipeline.outputs import atomic_outputs
from clrpipe.pipeline.params import CompareParams, ModelParams, Reads, SplitDir, TrainCommon
from clrpipe.pipeline.tracking import runs
from clrpipe.pipeline.training.trial import load_split, range_test_bounds, split_arrays

__all__ = ["STAGES", "CompareReads", "run"]


class _Target(Reads):
    target_score: float | None = None


class CompareReads(Reads):
    """What `compare` reads from params.yaml."""

    compare: CompareParams
    data: _Target
    model: ModelParams
    train: TrainCommon
    split: SplitDir


STAGES = {"compare": CompareReads}
METRICS = Path("metrics/compare.json")
TABLE = Path("reports/compare.md")
TRIALS_CSV = Path("plots/compare/trials.csv")
FIGURES = ("test_accuracy", "val_accuracy", "lr")


def run(cfg: DictConfig) -> dict:
    """Train every method x seed on Ray, log them, and write the comparison."""
    p = config.reads(cfg, CompareReads)
    split = split_arrays(*load_split(p.split.dir), p.train.validation_fraction, p.train.seed)
    methods = compare.plan(p.compare, range_test_bounds())
    hgb = p.compare.hgb if compare.uses_hgb(p.compare) else None
    if hgb is None:
        compare.target_score(p.data.target_score, [], 0.0)  # a null target needs the reference
    seeds = list(range(p.compare.first_seed, p.compare.first_seed + p.compare.seeds))

    started = time.perf_counter()
    ray = parallel.start_ray(p.compare.ray)
    try:
        with runs.stage_run(cfg, "compare") as tracked, \
                runs.TrialRuns(tracked).revoked_on_failure() as trials:
            lr_curves: dict[str, tuple] = {}

            def on_result(name: str, seed: int, out: dict) -> None:
                if name != HGB:
                    lr_curves.setdefault(name, (out["history"].lr_steps,
                                                out["history"].lr_values))
                trials.finished(name, seed, _trial_params(name, seed, methods, hgb), out)

            try:
                outcomes = parallel.run_trials(ray, methods, hgb, seeds, p.model, p.train,
                                               split, on_result)
            except parallel.TrialFailed as err:
                trials.failed(err.name, err.seed, _trial_params(err.name, err.seed, methods, hgb),
                              err.reason)
                raise
            target = compare.target_score(p.data.target_score, outcomes, p.compare.target_margin)
            trials.log_targets(target)
            summaries = compare.summarize(outcomes, target, p.compare.confidence)
            report = compare.report(p.compare, methods, summaries, seeds,
                                    time.perf_counter() - started, target)
            figures = plots.compare_figures(summaries, outcomes,
                                            {n: lr_curves[n] for n in methods}, target)
            _write_outputs(tracked, report, outcomes, figures)
    finally:
        ray.shutdown()
    click.echo(
        f"compare: {len(outcomes)} trials ({len(summaries)} methods x {len(seeds)} seeds) in "
        f"{report['seconds']:.0f} s -> {METRICS}, {TABLE}\n" + report["table"]
    )
    return report


def _trial_params(name: str, seed: int, methods: dict, hgb) -> dict:
    """A trial run's parameters: method, seed, and its schedule or boosting settings."""
    values: dict = {"method": name, "seed": seed}
    if name in methods:
        method = methods[name]
        spec = {k: v for k, v in method.schedule.model_dump().items() if v is not None}
        values |= {"batch_size": method.batch_size, "epochs": method.epochs, "schedule": spec}
    elif hgb is not None:
        values |= {"hgb": hgb.model_dump()}
    return values


def _write_outputs(tracked, report: dict, outcomes, figures) -> None:
    pngs = [Path("plots/compare") / f"{name}.png" for name in FIGURES]
    trials = pd.DataFrame(
        {"method": o.method, "seed": o.seed, f"test_{o.metric}": o.test_score,
         "test_loss": o.test_loss, "final_loss": o.final_loss,
         f"final_val_{o.metric}": o.val_score[-1], "train_seconds": sum(o.epoch_seconds)}
        for o in outcomes
    )
    metrics = {k: v for k, v in report.items() if k != "table"}
    tracked.log_metrics({
        key: value for key, value in config.flatten(metrics["methods"]).items()
        if value is not None and not (isinstance(value, float) and math.isnan(value))
    })
    with atomic_outputs(METRICS, TABLE, TRIALS_CSV, *pngs) as temps:
        metrics_tmp, table_tmp, trials_tmp, *png_tmps = temps
        metrics_tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        table_tmp.write_text(compare.report_markdown(report))
        trials.to_csv(trials_tmp, index=False)
        for name, tmp in zip(FIGURES, png_tmps, strict=True):
            tmp.write_bytes(plots.png_bytes(figures[name]))
        tracked.log_files({final: tmp for final, tmp in zip(
            [METRICS, TABLE, TRIALS_CSV, *pngs], temps, strict=True)}, "compare")

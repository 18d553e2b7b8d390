"""`compare` stage: every method of `compare:` x seeds, and gradient boosting, trained on Ray.

A method trains with SGD or another optimizer (Adam, schedule-free AdamW, Prodigy, Muon); a null
rate comes from `metrics/range_test.json` (SGD) or the optimizer's own range test, run first.
Trials run as Ray tasks (`comparison.parallel`); the driver logs each as a child run of this
stage's MLflow run as its task returns (`tracking.trials.TrialRuns`). A failed trial gets a FAILED
child run, the rest are cancelled, the stage run ends FAILED, trials that had finished are
marked FAILED too, and no output file is written. Outputs, all or none: `metrics/compare.json`
(per-method summary), `reports/compare.md`, `plots/compare/trials.csv` (one row per trial) and
`plots/compare/{test_accuracy,val_accuracy,lr}.png`, also artifacts of the stage's run, and
the best network (`compare.champion_candidate`) in `models/compare.keras`, registered.
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
from clrpipe.pipeline.outputs import atomic_outputs
from clrpipe.pipeline.params import (
    CompareParams,
    DataParams,
    ModelParams,
    Reads,
    RegistryName,
    SplitDir,
    TrainCommon,
)
from clrpipe.pipeline.tracking import runs, serving, trials
from clrpipe.pipeline.training.model import build_model
from clrpipe.pipeline.training.trial import load_split, range_test_bounds, split_arrays

__all__ = ["STAGES", "CompareReads", "run"]


class CompareReads(Reads):
    """What `compare` reads from params.yaml."""

    compare: CompareParams
    data: DataParams  # data.target_score, and the serving model's raw-row checks
    model: ModelParams
    train: TrainCommon
    split: SplitDir
    registry: RegistryName


STAGES = {"compare": CompareReads}
METRICS = Path("metrics/compare.json")
TABLE = Path("reports/compare.md")
TRIALS_CSV = Path("plots/compare/trials.csv")
MODEL = Path("models/compare.keras")
FIGURES = ("test_accuracy", "val_accuracy", "lr")


def run(cfg: DictConfig) -> dict:
    """Train every method x seed on Ray, log them, and write the comparison."""
    p = config.reads(cfg, CompareReads)
    train_frame, test_frame, dataset = load_split(p.split.dir)
    split = split_arrays(train_frame, test_frame, dataset, p.train.validation_fraction,
                         p.train.seed)
    bounds = range_test_bounds()
    compare.plan(p.compare, bounds)  # every rate but the optimizers' own sweeps', checked early
    hgb = p.compare.hgb if compare.uses_hgb(p.compare) else None
    if hgb is None:
        compare.target_score(p.data.target_score, [], 0.0)  # a null target needs the reference
    seeds = list(range(p.compare.first_seed, p.compare.first_seed + p.compare.seeds))

    started = time.perf_counter()
    ray = parallel.start_ray(p.compare.ray)
    try:
        sweeps = parallel.run_sweeps(ray, p.compare, p.model, p.train, split)
        methods = compare.plan(p.compare, bounds, {
            name: (s["base_lr"], s["max_lr"]) for name, s in sweeps.items()})
        with runs.stage_run(cfg, "compare") as tracked, \
                trials.TrialRuns(tracked).revoked_on_failure() as trial_runs:
            lr_curves: dict[str, tuple] = {}
            weights: dict[tuple[str, int], list] = {}

            def on_result(name: str, seed: int, out: dict) -> None:
                if name != compare.HGB:
                    weights[(name, seed)] = out.pop("weights")
                    lr_curves.setdefault(name, (out["history"].lr_steps,
                                                out["history"].lr_values))
                trial_runs.finished(name, seed, compare.trial_params(name, seed, methods, hgb), out)

            try:
                outcomes = parallel.run_trials(ray, methods, hgb, seeds, p.model, p.train,
                                               split, on_result)
            except parallel.TrialFailed as err:
                failed = compare.trial_params(err.name, err.seed, methods, hgb)
                trial_runs.failed(err.name, err.seed, failed, err.reason)
                raise
            target = compare.target_score(p.data.target_score, outcomes, p.compare.target_margin)
            trial_runs.log_targets(target)
            summaries = compare.summarize(outcomes, target, p.compare.confidence)
            report = compare.report(p.compare, methods, summaries, seeds,
                                    time.perf_counter() - started, target, sweeps)
            figures = plots.compare_figures(summaries, outcomes,
                                            {n: lr_curves[n] for n in methods}, target)
            pick, model = compare.champion_candidate(outcomes), None
            if pick is not None:
                model = build_model(p.model, split.x.shape[1], pick.seed, split.output)
                model.set_weights(weights[(pick.method, pick.seed)])
                report["champion_candidate"] = compare.candidate_entry(pick, methods)
            _write_outputs(tracked, report, outcomes, figures, model, (p, dataset.name))
    finally:
        ray.shutdown()
    click.echo(
        f"compare: {len(outcomes)} trials ({len(summaries)} methods x {len(seeds)} seeds) in "
        f"{report['seconds']:.0f} s -> {METRICS}, {TABLE}\n" + report["table"]
    )
    return report


def _write_outputs(tracked, report: dict, outcomes, figures, model, serve) -> None:
    """Every output or none; the candidate network saved and, in a tracked run, logged as a
    serving model and registered (`serve`: the params and the dataset's name)."""
    pngs = [Path("plots/compare") / f"{name}.png" for name in FIGURES]
    trial_table = pd.DataFrame(compare.trial_row(o) for o in outcomes)
    metrics = {k: v for k, v in report.items() if k != "table"}
    tracked.log_metrics({
        key: value for key, value in config.flatten(metrics["methods"]).items()
        if value is not None and not (isinstance(value, float) and math.isnan(value))
    })
    saved = [MODEL] if model is not None else []
    with atomic_outputs(METRICS, TABLE, TRIALS_CSV, *pngs, *saved) as temps:
        metrics_tmp, table_tmp, trials_tmp, *png_tmps = temps[:3 + len(pngs)]
        if model is not None:
            model.save(temps[-1])
            if tracked.active:
                p, name = serve
                metrics["champion_candidate"].update(serving.log_serving_model(
                    temps[-1], serving.fitted_preprocessing(p.split.dir, p.data),
                    p.registry.model_name(name), name, "compare"))
        metrics_tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        table_tmp.write_text(compare.report_markdown(report))
        trial_table.to_csv(trials_tmp, index=False)
        for name, tmp in zip(FIGURES, png_tmps, strict=True):
            tmp.write_bytes(plots.png_bytes(figures[name]))
        tracked.log_files({final: tmp for final, tmp in zip(
            [METRICS, TABLE, TRIALS_CSV, *pngs], temps, strict=False)}, "compare")

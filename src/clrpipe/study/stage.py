"""`study` stage: every dataset x method x seed of `study:`, and the tuned oracle, on Ray.

Range tests (one per dataset and optimizer a method takes its rate from) and packed trainings
(one per dataset and method or grid point, its seeds in one model) run as Ray tasks
(`clrpipe.study.runner`); a training that needs a range test is submitted when that test
returns. The driver logs every trial (method x seed x dataset) as a child run of this stage's
MLflow run as its task returns (a diverged one FAILED, with the reason). Outputs, all or none:
`metrics/study.json`, `reports/study.md`, `plots/study/{gap_to_oracle,mean_rank,validation}.png`,
also artifacts of the stage's run. A failing task cancels the rest; the stage run and its
finished trials end FAILED and nothing is written.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
from omegaconf import DictConfig

from clrpipe import plots
from clrpipe.pipeline import config as configuration
from clrpipe.pipeline.comparison import parallel
from clrpipe.pipeline.outputs import atomic_outputs
from clrpipe.pipeline.params import (
    CardioData,
    DataParams,
    ModelParams,
    Reads,
    SplitDir,
    StudyParams,
)
from clrpipe.pipeline.tracking import runs
from clrpipe.pipeline.tracking.trials import TrialRuns
from clrpipe.study import core, datasets, regret, runner

__all__ = ["STAGES", "StudyReads", "run"]


class StudyReads(Reads):
    """What `study` reads from params.yaml."""

    study: StudyParams
    model: ModelParams
    data: DataParams
    split: SplitDir


STAGES = {"study": StudyReads}
METRICS = Path("metrics/study.json")
REPORT = Path("reports/study.md")
FIGURES = ("gap_to_oracle", "mean_rank", "validation")


def run(cfg: DictConfig) -> dict:
    """Run the study and write its report."""
    p = configuration.reads(cfg, StudyReads)
    s = p.study
    jobs = core.plan(s)
    cardio = p.data if isinstance(p.data, CardioData) else None
    data = {name: datasets.load_dataset(
        name, cardio=cardio, split_dir=p.split.dir, test_size=s.test_size,
        validation_fraction=s.validation_fraction, seed=s.split_seed, rows=ds.rows)
        for name, ds in s.datasets.items()}
    started = time.perf_counter()
    ray = parallel.start_ray(s.ray)
    try:
        with runs.stage_run(cfg, "study") as tracked, \
                TrialRuns(tracked).revoked_on_failure() as trials:
            def finished(job, out):
                for trial in out["trials"]:
                    trials.finished(f"{job.dataset}/{job.method}", trial["outcome"].seed,
                                    _params(job), trial)

            def failed(job, reason):
                for seed in job.seeds:
                    trials.failed(f"{job.dataset}/{job.method}", seed, _params(job), reason)

            tests, results = runner.run_tasks(
                ray, jobs, {n: d.split for n, d in data.items()}, p.model, s, finished, failed)
            details = {name: _details(d, s.datasets[name]) for name, d in data.items()}
            found, curves = core.summarize_study(
                jobs, results, tests, details, seeds=s.seeds, grid_seeds=s.grid_seeds,
                tolerance=s.tolerance, confidence=s.confidence,
                seconds=time.perf_counter() - started)
            rule = regret.lr_rule(found["results"], found["dataset_details"], dev=s.dev,
                                  test=s.test, confidence=s.confidence)
            if rule is not None:
                found["lr_rule"] = rule
            _write_outputs(tracked, found, curves)
    finally:
        ray.shutdown()
    click.echo(f"study: {sum(len(j.seeds) for j in jobs)} trials ({len(jobs)} packed trainings, "
               f"{len(tests)} range tests) on {len(data)} datasets in {found['seconds']:.0f} s "
               f"-> {METRICS}, {REPORT}")
    return found


def _details(d, ds) -> dict:
    split = d.split
    return {"task": d.task, "rows": d.rows, "source": d.source, "fit_rows": len(split.x),
            "validation_rows": len(split.x_val), "test_rows": len(split.x_test),
            "features": int(split.x.shape[1]), "epochs": ds.epochs, "batch_size": ds.batch_size}


def _params(job) -> dict:
    return {"dataset": job.dataset, "method": job.method, "optimizer": job.optimizer,
            "schedule": job.schedule, "epochs": job.epochs, "batch_size": job.batch_size,
            **job.rates(), **{f"option.{k}": v for k, v in job.options.items()}}


def _clean(value):
    """JSON without NaN: non-finite numbers become null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_outputs(tracked, found: dict, curves: dict) -> None:
    found = _clean(found)
    pngs = [Path("plots/study") / f"{name}.png" for name in FIGURES]
    figures = plots.study_figures(found, curves)
    tracked.log_metrics({
        f"{dataset}.{method}.{key}": value
        for dataset, res in found["results"].items()
        for method, row in res["methods"].items()
        for key, value in row.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and value is not None
    })
    with atomic_outputs(METRICS, REPORT, *pngs) as temps:
        metrics_tmp, report_tmp, *png_tmps = temps
        metrics_tmp.write_text(json.dumps(found, indent=2, allow_nan=False) + "\n")
        report_tmp.write_text(core.markdown(found))
        for name, tmp in zip(FIGURES, png_tmps, strict=True):
            tmp.write_bytes(plots.png_bytes(figures[name]))
        tracked.log_files({final: tmp for final, tmp in zip(
            [METRICS, REPORT, *pngs], temps, strict=True)}, "study")

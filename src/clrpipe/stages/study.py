"""`study` stage: every dataset x method x seed of `study:`, and the tuned oracle, on Ray.

Range tests (one per dataset and optimizer a method takes its rate from) and packed trainings
(one per dataset and method or grid point, its seeds in one model) run as Ray tasks
(`clrpipe.study_runner`); a training that needs a range test is submitted when that test
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
import numpy as np
from omegaconf import DictConfig

from clrpipe import config as configuration
from clrpipe import parallel, plots, study, study_data, study_runner, tracking
from clrpipe.errors import ClrpipeError, first_line
from clrpipe.outputs import atomic_outputs
from clrpipe.params import CardioData, DataParams, ModelParams, Reads, SplitDir, StudyParams

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
    jobs = study.plan(s)
    cardio = p.data if isinstance(p.data, CardioData) else None
    data = {name: study_data.load_dataset(
        name, cardio=cardio, split_dir=p.split.dir, test_size=s.test_size,
        validation_fraction=s.validation_fraction, seed=s.split_seed, rows=ds.rows)
        for name, ds in s.datasets.items()}
    started = time.perf_counter()
    ray = parallel.start_ray(s.ray)
    try:
        with tracking.stage_run(cfg, "study") as tracked, \
                tracking.TrialRuns(tracked).revoked_on_failure() as trials:
            tests, results = _run_tasks(ray, p, jobs, data, trials)
            found, curves = _summarize(p, jobs, data, tests, results,
                                       time.perf_counter() - started)
            _write_outputs(tracked, found, curves)
    finally:
        ray.shutdown()
    click.echo(f"study: {sum(len(j.seeds) for j in jobs)} trials ({len(jobs)} packed trainings, "
               f"{len(tests)} range tests) on {len(data)} datasets in {found['seconds']:.0f} s "
               f"-> {METRICS}, {REPORT}")
    return found


def _run_tasks(ray, p: StudyReads, jobs, data, trials):
    """Submit the range tests and the trainings that need none; a returned range test releases
    the trainings waiting for it. Returns the range tests and the training results."""
    s = p.study
    remote_rt = ray.remote(num_cpus=1, max_retries=parallel.MAX_RETRIES)(
        study_runner.range_test_task)
    remote_job = ray.remote(num_cpus=1, max_retries=parallel.MAX_RETRIES)(
        study_runner.train_job_task)
    refs = {name: ray.put(d.split) for name, d in data.items()}
    pending: dict = {}

    def submit(job):
        ref = remote_job.remote(p.model, job, s.momentum, s.steps_per_execution, s.order_seed,
                                refs[job.dataset])
        pending[ref] = ("job", job)

    for dataset, optimizer in study.range_tests_needed(jobs):
        options = next(j.options for j in jobs if j.optimizer == optimizer and
                       j.needs_range_test)
        ref = remote_rt.remote(p.model, optimizer, s.range_test[optimizer],
                               s.datasets[dataset].batch_size, s.first_seed, s.momentum,
                               options, refs[dataset])
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
                for seed in what.seeds:
                    trials.failed(f"{what.dataset}/{what.method}", seed, _params(what), reason)
                raise ClrpipeError(f"study: {what.dataset} {what.method} failed: {reason}") \
                    from None
            raise ClrpipeError(f"study: range test of {what[1]} on {what[0]} failed: "
                               f"{reason}") from None
        if kind == "range_test":
            tests[what] = out
            for job in jobs:
                if job.needs_range_test and (job.dataset, job.optimizer) == what:
                    submit(study.fill_rates(job, (out["base_lr"], out["max_lr"])))
            continue
        job = out["job"]
        results[job.key] = out
        name = f"{job.dataset}/{job.method}"
        if "diverged" in out:
            for seed in job.seeds:
                trials.failed(name, seed, _params(job), out["diverged"])
        else:
            for trial in out["trials"]:
                trials.finished(name, trial["outcome"].seed, _params(job), trial)
    return tests, results


def _params(job) -> dict:
    return {"dataset": job.dataset, "method": job.method, "optimizer": job.optimizer,
            "schedule": job.schedule, "epochs": job.epochs, "batch_size": job.batch_size,
            **job.rates(), **{f"option.{k}": v for k, v in job.options.items()}}


def _summarize(p: StudyReads, jobs, data, tests, results, seconds: float):
    s = p.study
    per_dataset, details, curves = {}, {}, {}
    for dataset, d in data.items():
        done = [results[j.key]["job"] for j in jobs if j.dataset == dataset]
        outcomes = [o for j in done for o in results[j.key]["outcomes"]]
        compute = {}
        for job in done:
            spent = float(job.epochs)
            if job.needs_range_test:
                rt = tests[(dataset, job.optimizer)]
                spent += study.sweep_epochs(rt["steps"], rt["batch_size"], len(d.split.x))
            compute[job.method] = spent
        per_dataset[dataset] = study.summarize_dataset(
            outcomes, done, compute=compute, tolerance=s.tolerance, confidence=s.confidence)
        details[dataset] = {
            "task": d.task, "rows": d.rows, "source": d.source,
            "fit_rows": len(d.split.x), "validation_rows": len(d.split.x_val),
            "test_rows": len(d.split.x_test), "features": int(d.split.x.shape[1]),
            "epochs": s.datasets[dataset].epochs, "batch_size": s.datasets[dataset].batch_size,
            "range_tests": {opt: {k: v for k, v in rt.items() if k != "optimizer"}
                            for (ds, opt), rt in tests.items() if ds == dataset},
        }
        oracle = per_dataset[dataset]["oracles"][per_dataset[dataset]["oracle"]]
        shown = [j.method for j in done if j.family is None] + [oracle["grid_point"]]
        curves[dataset] = {}
        for name in shown:
            kept = [o.val_score for o in outcomes if o.method == name
                    and all(math.isfinite(v) for v in o.val_score)]
            if kept:
                label = per_dataset[dataset]["oracle"] if name == oracle["grid_point"] else name
                curves[dataset][label] = np.mean(kept, axis=0).tolist()
    found = study.report(per_dataset, details, seeds=s.seeds, grid_seeds=s.grid_seeds,
                         confidence=s.confidence, seconds=seconds)
    return found, curves


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
        report_tmp.write_text(study.markdown(found))
        for name, tmp in zip(FIGURES, png_tmps, strict=True):
            tmp.write_bytes(plots.png_bytes(figures[name]))
        tracked.log_files({final: tmp for final, tmp in zip(
            [METRICS, REPORT, *pngs], temps, strict=True)}, "study")

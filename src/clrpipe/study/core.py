"""The study's core: plan the trainings, then summarize them against the tuned oracle. No I/O.

Question: does an LR range test plus a cyclical schedule still pay off against a tuned constant
rate and against optimizers that need no rate? For each dataset every method trains the same
network with `seeds` seeds (one packed training per method, `clrpipe.study.packed`); the oracle is a
grid of constant rates per optimizer family (SGD, Adam), the point with the best mean final
validation score winning (what tuning by hand buys, at the cost of the whole grid).

Per dataset and method:
- test score (accuracy, or R² for regression): mean over seeds and its interval (an
  accuracy's Wilson interval on the test rows, an R²'s percentile bootstrap over seeds:
  `compare.score_interval`);
- gap to the oracle (the better of the SGD and Adam oracles on validation) and the paired
  bootstrap interval of (method - oracle) over the seeds both have, with its p-value; the
  verdict (win, tie, loss) comes from the p-values Holm-adjusted over the table's family (every
  method compared with that table's oracle), so each table's verdicts together keep a 5%
  family-wise error rate (`compare.versus`);
- compute: epochs per network, counting the method's range-test sweep (every sweep seed's
  batches, in epochs of the training part) and, for an oracle, every grid point's training;
- time to the oracle: epochs and seconds until the validation score first comes within
  `tolerance` of the oracle's mean final validation score (medians over seeds; a seed that never
  does counts as slowest, so "not reached" means at least half missed). Seconds are each
  network's share of its packed training (the packed epoch's wall time / seeds).
Across datasets: each method's mean rank (1 = best mean test score; diverged last) and its
win/tie/loss count against the oracle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from clrpipe.pipeline.comparison.compare import TrialOutcome, first_reach, score_interval, versus
from clrpipe.pipeline.params import StudyParams
from clrpipe.stats import median

__all__ = [
    "FAMILIES",
    "Job",
    "fill_rates",
    "finder_row",
    "grid_name",
    "markdown",
    "oracle_name",
    "plan",
    "range_tests_needed",
    "report",
    "summarize_dataset",
    "summarize_study",
    "sweep_epochs",
]

FAMILIES = ("sgd", "adam")
"""The optimizer families of the oracle's grid."""


def grid_name(family: str, learning_rate: float) -> str:
    return f"grid_{family}_{learning_rate:.3g}"


def oracle_name(family: str) -> str:
    return f"oracle_{family}"


@dataclass(frozen=True)
class Job:
    """One packed training: a method (or a grid point) on a dataset with its seeds. Rates a
    range test gives are None until `fill_rates`."""

    dataset: str
    method: str
    optimizer: str
    schedule: str
    seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    learning_rate: float | None = None
    base_lr: float | None = None
    max_lr: float | None = None
    cycles: int = 2
    options: dict = field(default_factory=dict)
    family: str | None = None
    needs_range_test: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.dataset, self.method

    def rates(self) -> dict[str, float]:
        """The rates it trains with (for the report and the runs' parameters)."""
        found = {"learning_rate": self.learning_rate, "base_lr": self.base_lr,
                 "max_lr": self.max_lr}
        return {k: v for k, v in found.items() if v is not None}


def plan(study: StudyParams) -> list[Job]:
    """Every dataset x (method, grid point), in config order."""
    seeds = tuple(range(study.first_seed, study.first_seed + study.seeds))
    grid_seeds = seeds[: study.grid_seeds] if study.grid_seeds <= study.seeds else tuple(
        range(study.first_seed, study.first_seed + study.grid_seeds))
    jobs = []
    for dataset, ds in study.datasets.items():
        for name, method in study.methods.items():
            rate = method.learning_rate if isinstance(method.learning_rate, int | float) else None
            jobs.append(Job(dataset, name, method.optimizer, method.schedule, seeds, ds.epochs,
                            ds.batch_size, learning_rate=rate, cycles=method.cycles,
                            options=dict(method.options),
                            needs_range_test=method.uses_range_test))
        for family, grid in study.grid.items():
            for rate in grid.rates():
                jobs.append(Job(dataset, grid_name(family, rate), family, "constant",
                                grid_seeds, ds.epochs, ds.batch_size, learning_rate=rate,
                                family=family))
    return jobs


def range_tests_needed(jobs: Sequence[Job]) -> list[tuple[str, str]]:
    """(dataset, optimizer) pairs some job takes its rate from, in first-use order."""
    found: dict[tuple[str, str], None] = {}
    for job in jobs:
        if job.needs_range_test:
            found[(job.dataset, job.optimizer)] = None
    return list(found)


def fill_rates(job: Job, bounds: tuple[float, float]) -> Job:
    """The job with the range test's rates: a constant at the geometric mean of (base_lr,
    max_lr) (`compare.suggested_constant_lr`'s rule), a triangle between them, a one-cycle
    peaking at max_lr."""
    from clrpipe.pipeline.comparison.compare import suggested_constant_lr

    base, peak = bounds
    if job.schedule == "constant":
        return replace(job, learning_rate=suggested_constant_lr(bounds))
    if job.schedule == "triangular":
        return replace(job, base_lr=base, max_lr=peak)
    return replace(job, max_lr=peak)


def sweep_epochs(steps_per_seed: Sequence[int], batch_size: int, rows: int) -> float:
    """A range test's cost in epochs of the training part: every seed's batches."""
    return float(sum(steps_per_seed) * batch_size / rows)


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _final_val(outcome: TrialOutcome) -> float:
    return outcome.val_score[-1] if outcome.val_score else math.nan


def _mean_val(trials: Sequence[TrialOutcome]) -> float:
    values = [_final_val(t) for t in trials]
    return float(np.mean(values)) if values and all(math.isfinite(v) for v in values) else -math.inf


def summarize_dataset(
    outcomes: Sequence[TrialOutcome],
    jobs: Sequence[Job],
    *,
    compute: Mapping[str, float],
    tolerance: float,
    confidence: float = 0.95,
) -> dict:
    """One dataset's results: the oracles (best grid point per family, and the better of them),
    and per method the quantities of the module docstring. `outcomes` are every trial of the
    dataset (grid points included, by method name); `compute` the epochs per network each
    job's method spent (range test sweeps included)."""
    by_method: dict[str, list[TrialOutcome]] = {}
    for outcome in outcomes:
        by_method.setdefault(outcome.method, []).append(outcome)
    for trials in by_method.values():
        trials.sort(key=lambda t: t.seed)
    metric = outcomes[0].metric if outcomes else "accuracy"

    oracles: dict[str, dict] = {}
    for family in FAMILIES:
        points = [j for j in jobs if j.family == family]
        if not points:
            continue
        scored = [(_mean_val(by_method.get(j.method, [])), j) for j in points]
        best_val, best = max(scored, key=lambda pair: pair[0])
        oracles[oracle_name(family)] = {
            "family": family, "grid_point": best.method, "learning_rate": best.learning_rate,
            "val_score": best_val if math.isfinite(best_val) else None,
            "grid": {j.method: (v if math.isfinite(v) else None) for v, j in scored},
            "points": {j.method: {
                "learning_rate": j.learning_rate,
                "val": [_final_val(t) for t in by_method.get(j.method, [])],
                "test": [t.test_score for t in by_method.get(j.method, [])]} for j in points},
            "compute_epochs": float(sum(j.epochs for j in points)),
        }
        by_method[oracle_name(family)] = by_method.get(best.method, [])
    if not oracles:
        raise ValueError("summarize_dataset: no grid, so no oracle")
    best_oracle = max(oracles, key=lambda n: oracles[n]["val_score"] or -math.inf)
    oracle_trials = by_method[best_oracle]
    oracle_val = oracles[best_oracle]["val_score"]
    target = None if oracle_val is None else oracle_val - tolerance
    oracle_scores = _finite([t.test_score for t in oracle_trials])
    oracle_mean = float(np.mean(oracle_scores)) if oracle_scores else math.nan
    named = [j.method for j in jobs if j.family is None]
    compared = versus({name: {t.seed: t.test_score for t in by_method.get(name, [])}
                       for name in [*named, *oracles]}, best_oracle, confidence)

    rows = {}
    for name in [*named, *oracles]:
        trials = by_method.get(name, [])
        scores = _finite([t.test_score for t in trials])
        interval = (score_interval(scores, metric, trials[0].test_rows, confidence)
                    if scores else None)
        paired = compared.get(name, {})
        reach = [first_reach(t.val_score, t.epoch_seconds, target) if target is not None
                 else (None, None) for t in trials]
        job = next((j for j in jobs if j.method == name), None)
        rows[name] = {
            "seeds": len(trials),
            "diverged": len(trials) - len(scores),
            f"test_{metric}_mean": None if interval is None else interval.mean,
            f"test_{metric}_ci_low": None if interval is None else interval.low,
            f"test_{metric}_ci_high": None if interval is None else interval.high,
            "gap_to_oracle": None if interval is None else interval.mean - oracle_mean,
            "test_rows": trials[0].test_rows if trials else 0,
            "paired_mean": paired.get("mean"),
            "paired_ci_low": paired.get("ci_low"),
            "paired_ci_high": paired.get("ci_high"),
            "paired_p": paired.get("p_value"),
            "paired_p_holm": paired.get("p_holm"),
            "verdict": paired.get("verdict", "oracle"),
            "compute_epochs": (oracles[name]["compute_epochs"] if name in oracles
                               else compute.get(name)),
            "reached_oracle": sum(e is not None for e, _ in reach),
            "epochs_to_oracle": median((e for e, _ in reach), missing="worst"),
            "seconds_to_oracle": median((s for _, s in reach), missing="worst"),
            "train_seconds": (float(np.mean([sum(t.epoch_seconds) for t in trials]))
                              if trials else None),
            "final_val_mean": _finite_mean([_final_val(t) for t in trials]),
            "rates": (job.rates() if job is not None
                      else {"learning_rate": oracles[name]["learning_rate"]}),
            "per_seed": [t.test_score for t in trials],
        }
    ranked = sorted(rows, key=lambda n: -(rows[n][f"test_{metric}_mean"]
                                           if rows[n][f"test_{metric}_mean"] is not None
                                           else -math.inf))
    for rank, name in enumerate(ranked, 1):
        rows[name]["rank"] = rank
    return {"metric": metric, "oracle": best_oracle, "oracles": oracles,
            "target_val": target, "tolerance": tolerance, "methods": rows}


def summarize_study(jobs: Sequence[Job], results: Mapping[tuple[str, str], dict],
                    tests: Mapping[tuple[str, str], dict], details: Mapping[str, dict], *,
                    seeds: int, grid_seeds: int, tolerance: float, confidence: float,
                    seconds: float) -> tuple[dict, dict]:
    """The whole report (`report`) from the task results, and per dataset the mean validation
    curve of every method and of the oracle (for the figure). `details[dataset]` holds at
    least `fit_rows` (the range tests' epochs are counted in it)."""
    per_dataset, curves, described = {}, {}, {}
    for dataset, detail in details.items():
        done = [results[j.key]["job"] for j in jobs if j.dataset == dataset]
        outcomes = [o for j in done for o in results[j.key]["outcomes"]]
        compute = {}
        for job in done:
            spent = float(job.epochs)
            if job.needs_range_test:
                rt = tests[(dataset, job.optimizer)]
                spent += sweep_epochs(rt["steps"], rt["batch_size"], detail["fit_rows"])
            compute[job.method] = spent
        found = summarize_dataset(outcomes, done, compute=compute, tolerance=tolerance,
                                  confidence=confidence)
        per_dataset[dataset] = found
        described[dataset] = {**detail, "range_tests": {
            opt: finder_row(rt) for (ds, opt), rt in tests.items() if ds == dataset}}
        grid_point = found["oracles"][found["oracle"]]["grid_point"]
        curves[dataset] = {}
        for name in [j.method for j in done if j.family is None] + [grid_point]:
            kept = [o.val_score for o in outcomes if o.method == name
                    and all(math.isfinite(v) for v in o.val_score)]
            if kept:
                label = found["oracle"] if name == grid_point else name
                curves[dataset][label] = np.mean(kept, axis=0).tolist()
    found = report(per_dataset, described, seeds=seeds, grid_seeds=grid_seeds,
                   confidence=confidence, seconds=seconds)
    return found, curves


def finder_row(rt: Mapping) -> dict:
    """A range test's entry in the report: its bounds and cost, and on its own curves the
    other finders' suggestions (`finders.suggest_all`) next to clrpipe's constant rate and
    CLR pair (the curves themselves are left out)."""
    from clrpipe.pipeline.comparison.compare import suggested_constant_lr
    from clrpipe.study.finders import suggest_all

    row = {k: v for k, v in rt.items() if k not in ("optimizer", "curves")}
    row["finders"] = {"clrpipe_constant": suggested_constant_lr((rt["base_lr"], rt["max_lr"])),
                      "clrpipe_clr_pair": [rt["base_lr"], rt["max_lr"]],
                      **{name: found["median"] for name, found in
                         suggest_all(rt.get("curves", [])).items()}}
    return row


def _finite_mean(values: Sequence[float]) -> float | None:
    kept = _finite(values)
    return float(np.mean(kept)) if kept else None


def report(per_dataset: Mapping[str, dict], details: Mapping[str, dict], *, seeds: int,
           grid_seeds: int, confidence: float, seconds: float) -> dict:
    """`metrics/study.json`: the datasets, each one's summary, and across datasets each
    method's mean rank and win/tie/loss count against the oracle."""
    names: list[str] = []
    for found in per_dataset.values():
        names += [n for n in found["methods"] if n not in names]
    across = {}
    for name in names:
        ranks = [f["methods"][name]["rank"] for f in per_dataset.values() if name in f["methods"]]
        verdicts = [f["methods"][name]["verdict"] for f in per_dataset.values()
                    if name in f["methods"]]
        gaps = [f["methods"][name]["gap_to_oracle"] for f in per_dataset.values()
                if name in f["methods"]]
        across[name] = {
            "mean_rank": float(np.mean(ranks)),
            "wins": verdicts.count("win"), "ties": verdicts.count("tie"),
            "losses": verdicts.count("loss"), "oracle": verdicts.count("oracle"),
            "gaps": gaps,
        }
    return {
        "datasets": list(per_dataset),
        "dataset_details": dict(details),
        "seeds": seeds, "grid_seeds": grid_seeds, "confidence": confidence,
        "results": dict(per_dataset),
        "across_datasets": dict(sorted(across.items(), key=lambda kv: kv[1]["mean_rank"])),
        "seconds": seconds,
    }


def _score(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    sign = "+" if signed else ""
    return f"{100 * value:{sign}.2f}" if metric == "accuracy" else f"{value:{sign}.4f}"


def _interval(low, high, metric: str, signed: bool = False) -> str:
    if low is None:
        return "n/a"
    return f"[{_score(low, metric, signed)}, {_score(high, metric, signed)}]"


def _p(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _count(value) -> str:
    return "not reached" if value is None else f"{value:g}"


def _epochs(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _rates(rates: Mapping[str, float]) -> str:
    return " / ".join(f"{v:.3g}" for v in rates.values()) if rates else "none (LR-free)"


def markdown(found: dict) -> str:
    """`reports/study.md`: the across-datasets table, then one table per dataset."""
    level = f"{100 * found['confidence']:g}%"
    lines = [
        "# Study: range test + CLR against tuned and learning-rate-free optimizers", "",
        f"Datasets: {', '.join(found['datasets'])}. {found['seeds']} seeds per method, "
        f"{found['grid_seeds']} per grid point of the oracle. Test accuracy: {level} Wilson "
        f"interval on the test rows; R²: {level} percentile bootstrap over seeds. Against the "
        f"oracle: the paired (by seed) {level} bootstrap interval of the difference; wins, ties "
        "and losses from its p-value, Holm-adjusted over each table's methods. Whole study: "
        f"{found['seconds']:.0f} s.", "",
        "## Across datasets", "",
        "| method | mean rank | wins / ties / losses vs oracle | gap to oracle per dataset |",
        "|---|---:|---:|---|",
    ]
    for name, row in found["across_datasets"].items():
        gaps = ", ".join(
            _score(g, found["results"][d]["metric"], True)
            for d, g in zip(found["datasets"], row["gaps"], strict=False)
        )
        wtl = f"{row['wins']} / {row['ties']} / {row['losses']}"
        if row["oracle"]:
            wtl += f" (oracle on {row['oracle']})"
        lines.append(f"| {name} | {row['mean_rank']:.2f} | {wtl} | {gaps} |")
    if found.get("lr_rule"):
        from clrpipe.study import regret

        lines += regret.markdown(found["lr_rule"])
    for dataset in found["datasets"]:
        res = found["results"][dataset]
        metric = res["metric"]
        unit = "accuracy %" if metric == "accuracy" else "R²"
        detail = found["dataset_details"].get(dataset, {})
        oracle = res["oracles"][res["oracle"]]
        tol = _score(res["tolerance"], metric)
        lines += [
            "", f"## {dataset}", "",
            f"{detail.get('task', '')}, {detail.get('rows', '?')} rows, "
            f"{detail.get('epochs', '?')} epochs at batch {detail.get('batch_size', '?')}. "
            f"Oracle: {res['oracle']} (constant {oracle['learning_rate']:.3g}, validation "
            f"{_score(oracle['val_score'], metric)}); \"to oracle\" = validation within {tol} "
            "of it.", "",
            f"| method | seeds | test {unit} | {level} interval | gap to oracle | paired "
            f"{level} interval | p (Holm) | verdict | rank | compute (epochs) | epochs to oracle | "
            "seconds to oracle | learning rate(s) |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
        ]
        for name, row in res["methods"].items():
            seeds = f"{row['seeds']}" + (f" ({row['diverged']} diverged)" if row["diverged"]
                                         else "")
            seconds = row["seconds_to_oracle"]
            lines.append(
                f"| {name} | {seeds} | {_score(row[f'test_{metric}_mean'], metric)} | "
                f"{_interval(row[f'test_{metric}_ci_low'], row[f'test_{metric}_ci_high'], metric)}"
                f" | {_score(row['gap_to_oracle'], metric, True)} | "
                f"{_interval(row['paired_ci_low'], row['paired_ci_high'], metric, True)} | "
                f"{_p(row.get('paired_p_holm'))} | {row['verdict']} | {row['rank']} | "
                f"{_epochs(row['compute_epochs'])} | {_count(row['epochs_to_oracle'])} | "
                f"{'not reached' if seconds is None else format(seconds, '.2f')} | "
                f"{_rates(row['rates'])} |"
            )
        lines += _finder_table(detail.get("range_tests", {}), res["oracles"])
    return "\n".join(lines) + "\n"


FINDERS = {"clrpipe_constant": "clrpipe constant", "clrpipe_clr_pair": "clrpipe CLR pair",
           "fastai_valley": "fastai valley", "fastai_minimum_div10": "fastai minimum/10",
           "lightning_steepest_log": "Lightning steepest (log-LR, <= 2.5.2)",
           "lightning_steepest_2_5_3": "Lightning steepest (>= 2.5.3)",
           "torch_lr_finder_steepest": "torch-lr-finder steepest"}


def _finder_table(tests: Mapping[str, dict], oracles: Mapping[str, dict]) -> list[str]:
    """Per range test (optimizer), every finder's suggestion on its curves, and the tuned
    oracle's rate of that optimizer's family for reference."""
    found = {opt: rt["finders"] for opt, rt in tests.items() if "finders" in rt}
    if not found:
        return []
    lines = ["", "Finder suggestions on the same sweeps (median over sweep seeds; the "
             "oracle's rate for reference):", "",
             "| sweep | oracle | " + " | ".join(FINDERS.values()) + " |",
             "|---|" + "---:|" * (len(FINDERS) + 1)]
    for opt, rules in found.items():
        oracle = oracles.get(oracle_name(opt), {}).get("learning_rate")
        cells = [("n/a" if rules.get(k) is None else
                  " / ".join(f"{v:.3g}" for v in rules[k]) if isinstance(rules[k], list)
                  else f"{rules[k]:.3g}") for k in FINDERS]
        lines.append(f"| {opt} | {'—' if oracle is None else f'{oracle:.3g}'} | "
                     + " | ".join(cells) + " |")
    return lines

"""Regret of the range test's constant-rate rules against the tuned grid, and the rule chosen on
the development tables. Pure: numpy and `clrpipe.stats`, no I/O.

Why: `RangeTestResult.lr` needs one rule (`clrpipe.suggestions.CONSTANT_LR_RULES`), and the
study already trains, per table and optimizer (SGD, Adam), a grid of constant rates with the same
seeds. So each rule is judged on that grid instead of by another training:

- its rate (from that optimizer's range test on that table) is scored at the grid point nearest
  in log10(lr); a rate outside the grid is clamped to the nearer end and flagged `clamped`;
  exactly between two points, the lower one;
- regret per seed: the test score of the tuned grid's best point (the one with the best mean
  final validation score, the study's oracle of that family) minus the test score at the rule's
  point; the mean over seeds with its paired (by seed) bootstrap interval (`stats`);
- normalised per table: divided by the grid's range (best minus worst mean test score over its
  points), so accuracy points and R² pool: 0 is the tuned point, 1 the worst constant rate the
  grid tried (negative when the rule's point beats the validation-chosen oracle on test);
- a diverged score (non-finite) counts as the grid's worst mean test score; a rule with no rate
  (`valley` when no seed had one) is scored at the grid's worst point and flagged `missing`;
- compute: epochs per network, the training plus the range test's sweep, against the grid's.

The rule is chosen on the development tables only: the smallest mean normalised regret over
their (table, optimizer) cells, SGD and Adam pooled; ties go to the earlier candidate. It is then
reported on the test tables, which take no part in the choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from clrpipe import stats
from clrpipe.suggestions import CONSTANT_LR_RULES, constant_lr

__all__ = [
    "CANDIDATES",
    "FAMILIES",
    "Grid",
    "candidate_rates",
    "cell_regret",
    "choose",
    "lr_rule",
    "markdown",
    "nearest",
    "pooled",
    "sweep_suggestions",
]

CANDIDATES = tuple(CONSTANT_LR_RULES)
"""The rules `RangeTestResult.lr` can use, in tie-breaking order."""
FAMILIES = ("sgd", "adam")
"""The optimizers whose range test and grid both exist in the study."""
TIE = 1e-12
"""Pooled regrets closer than this are a tie (the earlier candidate wins)."""


@dataclass(frozen=True)
class Grid:
    """One table x optimizer's tuned grid: per point (ascending rates) its per-seed final
    validation and test scores (seeds in the same order at every point), and the epochs each
    network trained."""

    rates: tuple[float, ...]
    val: tuple[tuple[float, ...], ...]
    test: tuple[tuple[float, ...], ...]
    epochs: float

    def __post_init__(self) -> None:
        if len(self.rates) < 2 or list(self.rates) != sorted(self.rates):
            raise ValueError(f"grid: expected >= 2 ascending rates, got {list(self.rates)}")
        seeds = {len(s) for s in (*self.val, *self.test)}
        if len(self.val) != len(self.rates) or len(self.test) != len(self.rates) or \
                len(seeds) != 1 or seeds == {0}:
            raise ValueError("grid: expected the same seeds' val and test scores at every point")

    @property
    def seeds(self) -> int:
        return len(self.test[0])


def nearest(rates: Sequence[float], lr: float) -> tuple[int, bool]:
    """Index of the rate nearest to `lr` in log10 (the lower on a tie), and whether `lr` lies
    outside [rates[0], rates[-1]] (clamped to that end)."""
    if not lr > 0:
        raise ValueError(f"lr: expected > 0, got {lr}")
    logs = np.log10(np.asarray(rates, float))
    index = int(np.argmin(np.abs(logs - math.log10(lr))))
    return index, bool(lr < rates[0] or lr > rates[-1])


def _means(rows: Sequence[Sequence[float]]) -> np.ndarray:
    x = np.asarray(rows, float)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(x).all(axis=1), x.mean(axis=1), np.nan)


def cell_regret(grid: Grid, lr: float | None, *, sweep_epochs: float = 0.0,
                confidence: float = 0.95) -> dict:
    """One rule on one table x optimizer (see the module docstring): the rule's rate and grid
    point, flags, the regret (test-score units) and the normalised regret, each with its
    paired bootstrap interval, the normalised regret per seed, and compute."""
    val = _means(grid.val)
    test = np.asarray(grid.test, float)
    means = _means(grid.test)
    if not np.isfinite(means).any():
        raise ValueError("grid: every point diverged, no regret to measure")
    worst = float(np.nanmin(means))
    test = np.where(np.isfinite(test), test, worst)
    means = test.mean(axis=1)
    best = int(np.argmax(np.where(np.isfinite(val), val, -np.inf)))
    span = float(means.max() - means.min())
    missing = lr is None
    index, clamped = (int(np.argmin(means)), False) if missing else nearest(grid.rates, lr)
    diff = stats.paired_bootstrap(test[best], test[index], confidence)

    def scaled(value):
        return None if value is None else (value / span if span > 0 else 0.0)

    return {
        "lr": lr, "grid_lr": grid.rates[index], "oracle_lr": grid.rates[best],
        "clamped": clamped, "missing": missing,
        "regret": diff.mean, "ci_low": diff.low, "ci_high": diff.high,
        "normalised": scaled(diff.mean), "normalised_ci_low": scaled(diff.low),
        "normalised_ci_high": scaled(diff.high),
        "per_seed": [scaled(float(v)) for v in test[best] - test[index]],
        "compute_epochs": float(grid.epochs + sweep_epochs),
        "grid_compute_epochs": float(grid.epochs * len(grid.rates)),
    }


def pooled(cells: Sequence[Mapping], confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean normalised regret over cells (table x optimizer) and its percentile bootstrap
    interval, the seeds resampled together across cells (seed i is the same network seed in
    every cell); the count of clamped and missing cells."""
    if not cells:
        return {"mean": None, "ci_low": None, "ci_high": None, "cells": 0, "clamped": 0,
                "missing": 0}
    per_seed = np.asarray([c["per_seed"] for c in cells], float)  # cells x seeds
    mean = float(per_seed.mean())
    low = high = None
    if per_seed.shape[1] >= 2:
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, per_seed.shape[1], (stats.RESAMPLES, per_seed.shape[1]))
        draws = per_seed[:, picks].mean(axis=(0, 2))
        tail = 50 * (1 - confidence)
        low, high = (float(v) for v in np.percentile(draws, [tail, 100 - tail]))
    return {"mean": mean, "ci_low": low, "ci_high": high, "cells": len(cells),
            "clamped": sum(bool(c["clamped"]) for c in cells),
            "missing": sum(bool(c["missing"]) for c in cells)}


def choose(dev_regret: Mapping[str, Mapping]) -> str:
    """The candidate with the smallest pooled development regret; ties (within `TIE`) to the
    earlier one in `dev_regret`'s order."""
    scored = [(name, row["mean"]) for name, row in dev_regret.items() if row["mean"] is not None]
    if not scored:
        raise ValueError("lr_rule: no candidate has a development regret")
    best = min(value for _, value in scored)
    return next(name for name, value in scored if value <= best + TIE)


def sweep_suggestions(curves: Sequence[tuple[Sequence[float], Sequence[float]]],
                      config) -> dict[str, float | None]:
    """The seeds' median suggestions (`RangeTestResult.suggestions`: valley, minimum, steepest,
    ...) of a range test, re-derived from its raw curves (lrs, losses) with the sweep's own
    `RangeTestParams`: the study's range test task returns the curves and bounds, not these."""
    from clrpipe.range_test import Curve, analyse

    found = analyse([Curve(i, lrs, losses) for i, (lrs, losses) in enumerate(curves)], config)
    return dict(found.suggestions)


def candidate_rates(range_test: Mapping, candidates: Sequence[str] = CANDIDATES) -> dict:
    """Each candidate rule's rate from one range test's entry (`base_lr`, `max_lr` and the
    seeds' median `suggestions`; an entry without them gives those rules None)."""
    found = range_test.get("suggestions") or {}
    return {rule: constant_lr(range_test["base_lr"], range_test["max_lr"], found, rule)
            for rule in candidates}


def _grid(result: Mapping, family: str, epochs: float) -> Grid | None:
    points = result.get("oracles", {}).get(f"oracle_{family}", {}).get("points")
    if not points:
        return None
    rows = sorted(points.values(), key=lambda p: p["learning_rate"])

    def scores(row, key):
        return tuple(math.nan if v is None else float(v) for v in row[key])

    return Grid(tuple(float(r["learning_rate"]) for r in rows),
                tuple(scores(r, "val") for r in rows), tuple(scores(r, "test") for r in rows),
                float(epochs))


def lr_rule(results: Mapping[str, Mapping], details: Mapping[str, Mapping], *,
            dev: Sequence[str], test: Sequence[str], confidence: float = 0.95,
            candidates: Sequence[str] = CANDIDATES) -> dict | None:
    """The `lr_rule` section of `metrics/study.json` from the study's per-table `results` and
    `dataset_details` (grid points with per-seed scores; range tests with bounds, suggestions,
    other finders' rates and steps): every candidate's regret per table and optimizer, pooled
    over dev and over test, the rule chosen on dev, and the other finders' regret for
    reference (not candidates: `RangeTestResult` does not compute them). None when no
    development table has both an SGD or Adam range test and that optimizer's grid."""
    per_table: dict[str, dict] = {}
    finders: dict[str, dict] = {}
    for table in [*dev, *test]:
        detail, result = details[table], results[table]
        per_table[table], finders[table] = {}, {}
        for family in FAMILIES:
            rt = detail.get("range_tests", {}).get(family)
            grid = _grid(result, family, detail["epochs"])
            if rt is None or grid is None or not np.isfinite(_means(grid.test)).any():
                continue  # no sweep, no grid, or a grid that diverged everywhere
            sweep = float(sum(rt["steps"]) * rt["batch_size"] / detail["fit_rows"])
            rates = candidate_rates(rt, candidates)
            per_table[table][family] = {
                rule: cell_regret(grid, lr, sweep_epochs=sweep, confidence=confidence)
                for rule, lr in rates.items()}
            others = {k: v for k, v in (rt.get("finders") or {}).items()
                      if not isinstance(v, list) and k != "clrpipe_constant"}
            finders[table][family] = {
                name: cell_regret(grid, lr, sweep_epochs=sweep, confidence=confidence)
                for name, lr in others.items()}

    def pool(found, names, tables):
        return {name: pooled([found[t][f][name] for t in tables for f in found[t]
                              if name in found[t][f]], confidence) for name in names}

    dev_regret = pool(per_table, candidates, dev)
    if all(row["mean"] is None for row in dev_regret.values()):
        return None
    finder_names = list(dict.fromkeys(n for t in finders.values() for f in t.values() for n in f))
    return {
        "candidates": list(candidates), "dev": list(dev), "test": list(test),
        "normalised_by": "the table's grid range (best - worst mean test score of the "
                         "optimizer's grid points)",
        "chosen": choose(dev_regret),
        "dev_regret": dev_regret,
        "test_regret": pool(per_table, candidates, test),
        "finders": {name: {"dev": pool(finders, [name], dev)[name],
                           "test": pool(finders, [name], test)[name]} for name in finder_names},
        "per_table": per_table,
    }


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _pooled_cell(row: Mapping) -> str:
    if row["mean"] is None:
        return "n/a"
    interval = "" if row["ci_low"] is None else \
        f" [{_num(row['ci_low'])}, {_num(row['ci_high'])}]"
    flags = [f"{row[k]} {k}" for k in ("clamped", "missing") if row[k]]
    return _num(row["mean"]) + interval + (f" ({', '.join(flags)})" if flags else "")


def markdown(section: Mapping) -> list[str]:
    """The report's lines for `lr_rule`: the choice, the pooled table (dev and test) and each
    table's normalised regret per optimizer."""
    level = "95%"
    lines = [
        "", "## The constant rate: `RangeTestResult.lr`", "",
        f"Chosen on the development tables ({', '.join(section['dev'])}): "
        f"**{section['chosen']}**; reported on the test tables "
        f"({', '.join(section['test']) or 'none'}). Regret: the tuned grid's best point's test "
        "score minus the score at the grid point nearest the rule's rate, normalised by "
        f"{section['normalised_by']}; SGD and Adam pooled; {level} bootstrap interval over "
        "seeds. 0 = the tuned rate, 1 = the grid's worst.", "",
        "| rule | dev regret | test regret |", "|---|---:|---:|",
    ]
    for name in section["candidates"]:
        mark = " (chosen)" if name == section["chosen"] else ""
        lines.append(f"| {name}{mark} | {_pooled_cell(section['dev_regret'][name])} | "
                     f"{_pooled_cell(section['test_regret'][name])} |")
    for name, row in section["finders"].items():
        lines.append(f"| {name} (reference) | {_pooled_cell(row['dev'])} | "
                     f"{_pooled_cell(row['test'])} |")
    lines += ["", "Per table (normalised regret, SGD / Adam; * clamped to the grid's end, "
              "? no rate):", "",
              "| rule | " + " | ".join(
                  f"{t}{' (dev)' if t in section['dev'] else ' (test)'}"
                  for t in section["per_table"]) + " |",
              "|---|" + "---:|" * len(section["per_table"])]
    for name in section["candidates"]:
        cells = []
        for table in section["per_table"].values():
            parts = []
            for family in FAMILIES:
                cell = table.get(family, {}).get(name)
                parts.append("n/a" if cell is None else _num(cell["normalised"], 2)
                             + ("*" if cell["clamped"] else "") + ("?" if cell["missing"] else ""))
            cells.append(" / ".join(parts))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines

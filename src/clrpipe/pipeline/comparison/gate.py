"""Regression gate: compare a run's metrics with committed references and say what regressed.

`dvc metrics diff` shows changes but never fails, so thresholds live here. The core is pure:
`evaluate` turns checks and metric values into rows {check, reference, tolerance, actual, ok},
`markdown` renders them (and `diff_markdown` a `dvc metrics diff --json` result) as tables for a
terminal or a pull-request comment. The loaders at the end read the reference file, a metrics
folder, a benchmark JSON and `dvc metrics diff`, and `run` ties them together for the CLI.

A metric is named `<file stem>.<key>`, nested keys joined with dots (`train_clr.test_accuracy`,
`range_test.spread.max_lr.ratio`); the benchmark's JSON is `bench.<key>`
(`bench.epoch.ratio_median`). Booleans count as 1 / 0. A check is one of:

- `reference` + `tolerance` (absolute): actual >= reference - tolerance; with `better: lower`,
  actual <= reference + tolerance;
- `reference` + `factor`: reference / factor <= actual <= reference * factor;
- `min` and/or `max`: fixed bounds (e.g. a time ratio measured in the same run).

Against a git revision the revision's value replaces `reference` (the tolerances stay).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.config import flatten
from clrpipe.pipeline.params import Section

__all__ = [
    "BENCH_PREFIX",
    "Check",
    "Reference",
    "Row",
    "bounds",
    "diff_markdown",
    "dvc_metrics_diff",
    "evaluate",
    "failed",
    "load_bench",
    "load_json",
    "load_metrics_dir",
    "markdown",
    "numeric_leaves",
    "parse_reference",
    "run",
    "split_diff",
]

BENCH_PREFIX = "bench"


class Check(Section):
    """One entry of the reference file's `checks` (see the module docstring)."""

    metric: str = Field(min_length=1)
    reference: float | None = None
    tolerance: float | None = Field(default=None, ge=0)
    factor: float | None = Field(default=None, gt=1)
    better: Literal["higher", "lower"] = "higher"
    min: float | None = None
    max: float | None = None
    note: str = ""

    @model_validator(mode="after")
    def _one_kind(self) -> Check:
        relative = [k for k in ("tolerance", "factor") if getattr(self, k) is not None]
        bounds = self.min is not None or self.max is not None
        if len(relative) + bounds != 1:
            raise ValueError("expected exactly one of tolerance, factor, or min/max")
        if relative and self.reference is None:
            raise ValueError(f"{relative[0]} needs a reference value")
        if bounds and self.reference is not None:
            raise ValueError("min/max take no reference value")
        if self.factor is not None and self.reference <= 0:
            raise ValueError("factor needs a positive reference value")
        return self


class Reference(Section):
    """The reference file: a description and the checks."""

    about: str = ""
    checks: list[Check] = Field(min_length=1)


@dataclass(frozen=True)
class Row:
    """One check's outcome; `ok` is None when its source was not measured."""

    check: str
    reference: float | None
    tolerance: str
    actual: float | None
    ok: bool | None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def parse_reference(raw: object, source: str) -> Reference:
    """Validate a reference file's content; fail naming the file and the key."""
    try:
        return Reference.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ClrpipeError(f"{source}: {key.lstrip('.') or 'top level'}: {message}") from None


def numeric_leaves(mapping: Mapping, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested mappings as `a.b.c` -> float (booleans as 1 / 0)."""
    return {
        f"{prefix}{key}": float(value) for key, value in flatten(mapping).items()
        if isinstance(value, bool | int | float)
    }


def bounds(check: Check, reference: float | None) -> tuple[float | None, float | None, str]:
    """Allowed (low, high) and the tolerance as text."""
    if check.tolerance is not None:
        if check.better == "higher":
            low = reference - check.tolerance
            return low, None, f"-{check.tolerance:g} (≥ {low:.4g})"
        high = reference + check.tolerance
        return None, high, f"+{check.tolerance:g} (≤ {high:.4g})"
    if check.factor is not None:
        low, high = reference / check.factor, reference * check.factor
        return low, high, f"factor {check.factor:g} ({low:.4g} to {high:.4g})"
    if check.min is not None and check.max is not None:
        return check.min, check.max, f"{check.min:g} to {check.max:g}"
    if check.min is not None:
        return check.min, None, f"≥ {check.min:g}"
    return None, check.max, f"≤ {check.max:g}"


def evaluate(
    reference: Reference,
    current: Mapping[str, float],
    baseline: Mapping[str, float] | None = None,
    unmeasured: tuple[str, ...] = (),
) -> list[Row]:
    """Check `current` values; `baseline` (a revision's values) replaces the references it has.

    Metrics under a prefix in `unmeasured` (e.g. `bench.` without a benchmark file) are
    reported as not measured instead of failing; any other missing metric fails.
    """
    rows = []
    for check in reference.checks:
        ref = check.reference
        if baseline is not None and ref is not None and check.metric in baseline:
            ref = baseline[check.metric]
        low, high, tolerance = bounds(check, ref)
        actual = current.get(check.metric)
        if check.metric.startswith(unmeasured) and actual is None:
            rows.append(Row(check.metric, ref, tolerance, None, None, "not measured"))
            continue
        if actual is None:
            rows.append(Row(check.metric, ref, tolerance, None, False, "missing"))
            continue
        ok = math.isfinite(actual) and (low is None or actual >= low) and (
            high is None or actual <= high
        )
        rows.append(Row(check.metric, ref, tolerance, actual, ok, check.note))
    return rows


def failed(rows: list[Row]) -> list[Row]:
    return [row for row in rows if row.ok is False]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"{value:.4g}"
    return str(value)


def markdown(rows: list[Row], reference_label: str = "reference") -> str:
    """A headline and one table row per check; failures in bold, with the check's note."""
    bad = failed(rows)
    checked = [row for row in rows if row.ok is not None]
    headline = (
        f"**Gate failed: {len(bad)} of {len(checked)} checks regressed**"
        if bad
        else f"**Gate passed: {len(checked)} checks within tolerance**"
    )
    lines = [
        headline,
        "",
        f"| check | {reference_label} | tolerance | actual | result |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        result = {True: "pass", False: "**FAIL**", None: "skipped"}[row.ok]
        if row.note and row.ok is not True:
            result += f" ({row.note})"
        lines.append(
            f"| `{row.check}` | {_number(row.reference)} | {row.tolerance} "
            f"| {_number(row.actual)} | {result} |"
        )
    return "\n".join(lines)


def split_diff(diff: Mapping[str, Mapping]) -> tuple[dict, dict]:
    """`dvc metrics diff --json` -> (old, new) values by metric name (`<file stem>.<key>`)."""
    old, new = {}, {}
    for path, entries in diff.items():
        stem = Path(path).stem
        for key, change in entries.items():
            old[f"{stem}.{key}"] = change.get("old")
            new[f"{stem}.{key}"] = change.get("new")
    return old, new


def diff_markdown(diff: Mapping[str, Mapping], rev: str) -> str:
    """The metrics that differ between `rev` and the workspace, as a table."""
    old, new = split_diff(diff)
    changed = sorted(name for name in new if old.get(name) != new[name])
    lines = [f"**Metrics: workspace against `{rev}`**", ""]
    if not changed:
        return "\n".join([*lines, f"No metric differs from `{rev}` ({len(new)} compared)."])
    lines += [f"| metric | {rev} | workspace | change |", "|---|---|---|---|"]
    for name in changed:
        before, after = old.get(name), new[name]
        change = f"{after - before:+.4g}" if _is_number(before) and _is_number(after) else "—"
        lines.append(f"| `{name}` | {_number(before)} | {_number(after)} | {change} |")
    if len(changed) < len(new):
        lines += ["", f"{len(new) - len(changed)} unchanged metrics not shown."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- I/O


def load_json(path: Path, what: str) -> object:
    if not path.is_file():
        raise ClrpipeError(f"{path}: not found; expected {what}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClrpipeError(f"{path}: not valid JSON ({err}); expected {what}") from None


def load_metrics_dir(folder: Path) -> dict[str, float]:
    """Every `*.json` in `folder`, flattened and named by file stem."""
    if not folder.is_dir():
        raise ClrpipeError(f"{folder}: not a folder; expected the metrics folder (--metrics-dir)")
    metrics: dict[str, float] = {}
    for path in sorted(folder.glob("*.json")):
        found = load_json(path, "a metrics file (a JSON object)")
        if isinstance(found, dict):
            metrics.update(numeric_leaves(found, f"{path.stem}."))
    return metrics


def load_bench(path: Path) -> dict[str, float]:
    found = load_json(path, "the benchmark's --json output")
    if not isinstance(found, dict):
        raise ClrpipeError(f"{path}: expected a JSON object (bench/benchmark.py --json)")
    return numeric_leaves(found, f"{BENCH_PREFIX}.")


def dvc_metrics_diff(rev: str) -> dict:
    """`dvc metrics diff --json --all <rev>` in the working directory."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "diff", "--json", "--all", rev],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1].removeprefix("ERROR: ") if lines else f"exit code {done.returncode}"
        raise ClrpipeError(f"--against {rev}: dvc metrics diff failed: {reason}")
    text = done.stdout.strip()
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        raise ClrpipeError(f"--against {rev}: dvc metrics diff printed no JSON") from None


def run(
    reference: Path | None,
    metrics_dir: Path,
    bench: Path | None,
    against: str | None,
) -> tuple[str, bool]:
    """The gate's report (markdown) and whether every check passed."""
    if reference is None and against is None:
        raise ClrpipeError("gate: give --reference FILE, --against REV, or both")
    checks = None
    if reference is not None:
        raw = load_json(reference, "the gate's reference values")
        checks = parse_reference(raw, str(reference))
    current = {} if bench is None else load_bench(bench)
    unmeasured = () if bench is not None else (f"{BENCH_PREFIX}.",)
    parts, baseline = [], None
    if against is not None:
        diff = dvc_metrics_diff(against)
        parts.append(diff_markdown(diff, against))
        old, new = split_diff(diff)
        baseline = numeric_leaves(old)
        current.update(numeric_leaves(new))
    else:
        current.update(load_metrics_dir(metrics_dir))
    if checks is None:
        return "\n".join(parts), True
    rows = evaluate(checks, current, baseline, unmeasured)
    label = f"reference ({against})" if against is not None else "reference"
    parts.append(markdown(rows, label))
    return "\n\n".join(parts), not failed(rows)

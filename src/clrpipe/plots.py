"""Every figure clrpipe draws, as plain matplotlib `Figure`s (never pyplot's registry).

A `Figure` made directly is not kept alive by pyplot, so many trials or stages in one process
do not leak figures, and nothing needs closing. `png_bytes` renders one for a file or an MLflow
artifact. Axes-level functions take an `ax` so users can place them in their own figures.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

if TYPE_CHECKING:  # only for annotations: drawing needs no TensorFlow
    from clrpipe.pipeline.training.loop import History

__all__ = [
    "compare_figures",
    "png_bytes",
    "range_test_axes",
    "range_test_figure",
    "study_figures",
    "training_figures",
]


def png_bytes(figure: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def training_figures(history: History, title: str, score: str = "accuracy") -> dict[str, Figure]:
    """`curves`: loss and the score (accuracy, R²) per epoch, train and validation; `lr`: LR
    per step."""
    epochs = range(1, len(history.epoch_seconds) + 1)
    curves = Figure(figsize=(10, 3.8), layout="constrained")
    loss_ax, acc_ax = curves.subplots(1, 2)
    for metric, ax in (("loss", loss_ax), (score, acc_ax)):
        ax.plot(epochs, history.epochs[metric], label="train")
        if f"val_{metric}" in history.epochs:
            ax.plot(epochs, history.epochs[f"val_{metric}"], label="validation")
        ax.set(xlabel="epoch", ylabel=metric, title=f"{title}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    lr = Figure(figsize=(8, 3.2), layout="constrained")
    ax = lr.subplots()
    ax.plot(history.lr_steps, history.lr_values)
    ax.set(xlabel="optimizer step", ylabel="learning rate", title=f"{title}: learning rate")
    ax.grid(alpha=0.3)
    return {"curves": curves, "lr": lr}


def range_test_axes(result, ax: Axes | None = None, accuracy_ax: Axes | None = None) -> Axes:
    """A range test's smoothed loss against LR (log x), one line per seed with its raw loss
    faint, base_lr and max_lr marked; held-out accuracy per seed on `accuracy_ax` if given."""
    if ax is None:
        ax = Figure(figsize=(7, 4), layout="constrained").subplots()
    for analysis in result.analyses:
        curve = analysis.curve
        (line,) = ax.plot(curve.lrs, analysis.smoothed, label=f"seed {curve.seed}")
        ax.plot(curve.lrs, curve.losses, color=line.get_color(), alpha=0.15, lw=0.8)
        if accuracy_ax is not None and curve.val_accuracy is not None:
            accuracy_ax.plot(curve.lrs[curve.val_steps], curve.val_accuracy,
                             color=line.get_color(), label=f"seed {curve.seed}")
    finite = np.concatenate([a.smoothed[np.isfinite(a.smoothed)] for a in result.analyses])
    if finite.size:
        low, high = float(finite.min()), float(finite.max())
        ax.set_ylim(low - 0.05 * (high - low), high + 0.25 * (high - low))
    labelled = [(ax, "loss (smoothed; raw faint)"), (accuracy_ax, "held-out accuracy")]
    for each, ylabel in labelled:
        if each is None:
            continue
        each.set_xscale("log")
        for value, name, style in ((result.base_lr, "base_lr", "--"),
                                   (result.max_lr, "max_lr", "-")):
            each.axvline(value, color="black", ls=style, lw=1, label=f"{name} {value:.3g}")
        each.set(xlabel="learning rate", ylabel=ylabel)
        each.grid(alpha=0.3, which="both")
        each.legend(fontsize=8)
    return ax


def range_test_figure(result, batch_size: int) -> Figure:
    """The range-test stage's figure: loss panel, plus an accuracy panel when it was tracked."""
    with_acc = any(
        a.curve.val_accuracy is not None and a.curve.val_accuracy.size for a in result.analyses
    )
    figure = Figure(figsize=(11 if with_acc else 7, 4), layout="constrained")
    axes = figure.subplots(1, 2 if with_acc else 1, squeeze=False)[0]
    loss_ax = range_test_axes(result, axes[0], axes[1] if with_acc else None)
    loss_ax.set_title(f"LR range test (batch {batch_size}, rule {result.rule})")
    return figure


def compare_figures(
    summaries: Mapping, outcomes: Sequence, lr_curves: Mapping, target: float
) -> dict[str, Figure]:
    """Test accuracy per method with its interval and seeds; validation accuracy per epoch
    (mean line, min-max band over seeds; gradient boosting as a level); LR per step."""
    names = list(summaries)
    metric = next(iter(summaries.values())).metric if summaries else "accuracy"
    unit = 100 if metric == "accuracy" else 1
    label = "accuracy %" if metric == "accuracy" else "R²"
    acc = Figure(figsize=(8, 3.6), layout="constrained")
    ax = acc.subplots()
    for i, name in enumerate(names):
        s = summaries[name]
        mean = unit * s.test_score.mean
        err = None if s.test_score.low is None else [[mean - unit * s.test_score.low],
                                                     [unit * s.test_score.high - mean]]
        ax.errorbar([i], [mean], yerr=err, fmt="o", capsize=6, color=f"C{i}")
        ax.scatter([i + 0.15] * len(s.per_seed_score),
                   [unit * a for a in s.per_seed_score], s=10, color=f"C{i}", alpha=0.6)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set(ylabel=f"test {label}", title=f"test {label.split()[0]}: mean, interval, seeds")
    ax.grid(alpha=0.3, axis="y")

    val = Figure(figsize=(8, 4), layout="constrained")
    ax = val.subplots()
    for i, name in enumerate(names):
        curves = [o.val_score for o in outcomes if o.method == name]
        if not summaries[name].iterative:
            ax.axhline(unit * float(np.mean(curves)), color=f"C{i}", ls=":", label=name)
            continue
        length = min(len(c) for c in curves)
        grid = unit * np.array([c[:length] for c in curves])
        epochs = np.arange(1, length + 1)
        ax.plot(epochs, grid.mean(axis=0), color=f"C{i}", label=name)
        ax.fill_between(epochs, grid.min(axis=0), grid.max(axis=0), color=f"C{i}", alpha=0.2)
    ax.axhline(unit * target, color="grey", ls="--", lw=0.8, label="target")
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, unit * (target - 0.03)), high)  # zoom on the target
    ax.set(xlabel="epoch", ylabel=f"validation {label}",
           title=f"validation {label.split()[0]}: mean over seeds, min-max band")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    rows = max(len(lr_curves), 1)
    lr = Figure(figsize=(8, 1.8 * rows), layout="constrained")
    axes = lr.subplots(rows, 1, squeeze=False)
    for i, (name, (steps, values)) in enumerate(lr_curves.items()):
        ax = axes[i, 0]
        ax.plot(steps, values, color=f"C{names.index(name)}")
        ax.set(ylabel="LR", title=name)
        ax.grid(alpha=0.3)
    if not lr_curves:
        axes[0, 0].text(0.5, 0.5, "no network method", ha="center", transform=axes[0, 0].transAxes)
    axes[-1, 0].set_xlabel("optimizer step (learning rate read after each compiled call)")
    return {"test_accuracy": acc, "val_accuracy": val, "lr": lr}


def study_figures(found: Mapping, curves: Mapping[str, Mapping[str, Sequence[float]]]
                  ) -> dict[str, Figure]:
    """The study (`metrics/study.json`'s content): per dataset each method's paired (by seed)
    test score difference to the oracle with its interval; the mean rank across datasets; and
    per dataset the mean validation curve of each method (`curves[dataset][method]`)."""
    datasets = list(found["datasets"])
    gaps = Figure(figsize=(3.2 * len(datasets) + 1, 4.8), layout="constrained")
    axes = gaps.subplots(1, len(datasets), squeeze=False, sharey=True)[0]
    for ax, dataset in zip(axes, datasets, strict=True):
        res = found["results"][dataset]
        unit = 100 if res["metric"] == "accuracy" else 1
        names = list(res["methods"])
        for i, name in enumerate(names):
            row = res["methods"][name]
            gap = row["paired_mean"] if row["paired_mean"] is not None else row["gap_to_oracle"]
            if gap is None:
                ax.scatter([0], [i], marker="x", color="red")
                continue
            low, high = row["paired_ci_low"], row["paired_ci_high"]
            err = None if low is None else [[max(unit * (gap - low), 0.0)],
                                            [max(unit * (high - gap), 0.0)]]
            color = {"win": "C2", "loss": "C3"}.get(row["verdict"], "C0")
            ax.errorbar([unit * gap], [i], xerr=err, fmt="o", capsize=3, color=color)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set(title=dataset, xlabel="test " + ("accuracy points" if unit == 100 else "R²")
               + " vs oracle")
        ax.grid(alpha=0.3, axis="x")
    axes[0].invert_yaxis()

    across = found["across_datasets"]
    rank = Figure(figsize=(8, 4), layout="constrained")
    ax = rank.subplots()
    names = list(across)
    ax.barh(range(len(names)), [across[n]["mean_rank"] for n in names], color="C0")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=f"mean rank over {len(datasets)} datasets (1 = best test score)",
           title="mean rank across datasets")
    ax.grid(alpha=0.3, axis="x")

    val = Figure(figsize=(3.4 * len(datasets) + 1, 3.8), layout="constrained")
    axes = val.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets, strict=True):
        res = found["results"][dataset]
        unit = 100 if res["metric"] == "accuracy" else 1
        for i, (name, curve) in enumerate(curves.get(dataset, {}).items()):
            ax.plot(np.arange(1, len(curve) + 1), unit * np.asarray(curve), color=f"C{i % 10}",
                    label=name, lw=1)
        if res["target_val"] is not None:
            ax.axhline(unit * res["target_val"], color="grey", ls="--", lw=0.8)
            low, high = ax.get_ylim()
            ax.set_ylim(max(low, unit * (res["target_val"] - 0.15)), high)
        ax.set(title=dataset, xlabel="epoch", ylabel="validation " + (
            "accuracy %" if unit == 100 else "R²"))
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=6, loc="lower right")
    return {"gap_to_oracle": gaps, "mean_rank": rank, "validation": val}

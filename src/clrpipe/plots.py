"""Matplotlib figures for the stages: training curves and the learning rate over steps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

from clrpipe.training import History


def training_figures(history: History, title: str) -> dict[str, Figure]:
    """`curves`: loss and accuracy per epoch (train and validation); `lr`: LR per step.

    Plain `Figure`s with a constrained layout: nothing is kept in pyplot's registry, and a
    `savefig` draws once (no `bbox_inches="tight"` second pass)."""
    epochs = range(1, len(history.epoch_seconds) + 1)
    curves = Figure(figsize=(10, 3.8), layout="constrained")
    loss_ax, acc_ax = curves.subplots(1, 2)
    for metric, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
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

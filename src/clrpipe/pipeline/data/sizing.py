"""Training sizes that fit the table: the one rule behind every `auto` value in `conf/`.

A user's table (`data=table`) leaves the batch sizes, the epochs, the CLR half cycle, the range
test's sweep length and its held-out slice at `auto`; the stages that know the training rows
(`range_test`, `train_baseline`, `train_clr`, after `split`) turn each `auto` into a number with
`rule` and `resolve`, and write the numbers to their metrics and MLflow params. An explicit
number in params.yaml always wins; the cardio replication pins the article's numbers.

The rule, for `rows` training rows (docs/tables.md shows it on 150 to 50M rows):

- batch size: the power of two nearest rows / 200 (about 200 steps an epoch), clipped to
  16..8192 and to at most a quarter of the rows; both trainings use it, so the baseline and CLR
  differ only in their schedule;
- epochs: round(5M / rows), clipped to 1..50 (a budget of about five million row visits, the
  article's 50 epochs on small tables, one pass over a 5M+ row table);
- CLR half cycle (`schedule.step_size_epochs`): a tenth of `train.clr.epochs` (the rule's or a
  pinned number), so a run is five whole triangles and ends at the base rate;
- range-test sweep (`range_test.num_steps`): three epochs of batches, clipped to 100..400;
- range-test held-out slice (`range_test.validation_rows`): a tenth of the rows, at most 2000,
  at least two rows per class (a stratified slice), and leaving a batch to sweep.

Pure: numbers in, numbers out; `resolve` edits a copy of the config.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from omegaconf import DictConfig, OmegaConf

from clrpipe.pipeline.params import AUTO, AUTO_KEYS, settle_auto_schedule

__all__ = ["Sizing", "auto_report", "resolve", "rule"]

STEPS_PER_EPOCH = 200
BATCH_RANGE = (16, 8192)
ROW_VISITS = 5_000_000
EPOCH_RANGE = (1, 50)
CYCLES = 5
SWEEP_EPOCHS = 3
SWEEP_RANGE = (100, 400)
MAX_VALIDATION_ROWS = 2000


@dataclass(frozen=True)
class Sizing:
    """The numbers `auto` stands for, for one table."""

    batch_size: int
    epochs: int
    step_size_epochs: float
    num_steps: int
    validation_rows: int


def _clip(value: float, bounds: tuple[int, int]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def rule(rows: int, task: str, classes: int = 0) -> Sizing:
    """The sizes for `rows` training rows of a `task` table with `classes` classes (0 for
    regression); see the module doc."""
    if rows < 2:
        raise ValueError(f"rows: expected at least 2 training rows, got {rows}")
    nearest = 2 ** round(math.log2(max(rows / STEPS_PER_EPOCH, 1)))
    batch = int(min(_clip(nearest, BATCH_RANGE), max(1, rows // 4)))
    epochs = int(_clip(round(ROW_VISITS / rows), EPOCH_RANGE))
    sweep = int(_clip(SWEEP_EPOCHS * math.ceil(rows / batch), SWEEP_RANGE))
    per_class = 2 * classes if task != "regression" else 2
    validation = min(max(rows // 10, per_class), MAX_VALIDATION_ROWS, rows - batch)
    return Sizing(batch, epochs, epochs / CYCLES / 2, sweep, max(validation, 0))


def resolve(cfg: DictConfig, rows: int, task: str, classes: int = 0
            ) -> tuple[DictConfig, dict[str, int | float]]:
    """A copy of `cfg` with every `auto` of `AUTO_KEYS` replaced by `rule`'s number, and the
    replaced keys with their numbers (empty when nothing was `auto`)."""
    sizes = asdict(rule(rows, task, classes))
    values = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(values.get("schedule"), dict):
        values["schedule"] = settle_auto_schedule(values["schedule"])
    out = OmegaConf.create(values)
    done: dict[str, int | float] = {}
    for key, size in AUTO_KEYS.items():  # train.clr.epochs comes before the half cycle
        if OmegaConf.select(out, key, default=None) == AUTO:
            if size == "step_size_epochs":  # a tenth of the CLR run, even a pinned one
                sizes[size] = OmegaConf.select(out, "train.clr.epochs") / CYCLES / 2
            OmegaConf.update(out, key, sizes[size], merge=False)
            done[key] = sizes[size]
    return out, done


def auto_report(resolved: dict[str, int | float], *keys: str) -> dict:
    """`{"auto": {key: number}}` for the resolved keys starting with one of `keys` (the ones
    a stage reads), or `{}` when none was `auto`: what the stage's metrics record."""
    mine = {k: v for k, v in resolved.items() if k.startswith(keys)}
    return {"auto": mine} if mine else {}

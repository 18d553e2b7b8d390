"""The `compare:` and `study:` sections of `params.yaml`: methods (an optimizer, a schedule, a
batch size) times seeds, gradient boosting as the reference, and the study's datasets, methods
and tuned grid. Re-exported by `clrpipe.pipeline.params`, the one place config is validated."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from clrpipe.settings import (
    Integer,
    Number,
    PositiveInt,
    RangeTestParams,
    ScheduleParams,
    Section,
    _show,
)

# --- compare --------------------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adam", "adamw_ema", "muon", "schedule_free_adamw", "prodigy")
"""The optimizers `compare` and the study train with (`clrpipe.optimizers.build_optimizer`)."""


class MethodParams(Section):
    """One network method of `compare.methods`: an optimizer (`options` go to its class), a
    schedule, its batch size, optional epochs. Null rates come from the range test: the
    `range_test` stage's for SGD, the sweep `compare.range_test.<optimizer>` for the others."""

    schedule: ScheduleParams
    batch_size: PositiveInt
    epochs: PositiveInt | None = None
    optimizer: Literal[OPTIMIZERS] = "sgd"
    options: dict[str, Any] = {}

    def needs_sweep(self) -> bool:
        """Whether a null rate of a non-SGD optimizer asks `compare` for its own sweep."""
        rates = [v for k, v in self.schedule.model_dump().items() if "learning_rate" in k]
        return self.optimizer != "sgd" and any(v is None for v in rates)


class HgbParams(Section):
    """`compare.hgb:` HistGradientBoostingClassifier settings."""

    learning_rate: float = Field(default=0.1, gt=0)
    max_iter: PositiveInt = 100
    max_leaf_nodes: int = Field(default=31, gt=1)


class RayParams(Section):
    """`compare.ray:` where the trials run (null address: an embedded local Ray)."""

    address: str | None = None
    num_cpus: PositiveInt | None = None


class CompareParams(Section):
    """`compare:` methods x seeds, and gradient boosting as the reference. A trial's "epochs to
    target" counts epochs until its validation score reaches `data.target_score`, or when
    that is null the reference's mean validation score minus `target_margin`."""

    seeds: PositiveInt
    first_seed: Integer = 0
    epochs: PositiveInt
    target_margin: float = Field(default=0.004, ge=0)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    suggested_lr: Literal["geometric_mean", "arithmetic_mean"] = "geometric_mean"
    select: list[str] | None = None
    methods: dict[str, MethodParams]
    hgb: HgbParams | None = None
    range_test: dict[Literal[OPTIMIZERS], RangeTestParams] = {}
    ray: RayParams = RayParams()

    @model_validator(mode="after")
    def _names(self) -> CompareParams:
        if "hgb" in self.methods:
            raise ValueError("methods: the name hgb is reserved for the gradient-boosting "
                             "reference")
        known = [*self.methods, *(["hgb"] if self.hgb is not None else [])]
        if self.select is not None:
            unknown = [name for name in self.select if name not in known]
            if unknown or not self.select:
                got = repr(unknown[0]) if unknown else "an empty list"
                raise ValueError(f"select: expected names from {', '.join(known)}, got {got}")
        for name, method in self.methods.items():
            if method.needs_sweep() and method.optimizer not in self.range_test:
                raise ValueError(f"range_test: expected a sweep for optimizer "
                                 f"{method.optimizer} (methods.{name} has a null rate), got none")
        return self


# --- study --------------------------------------------------------------------------------------

STUDY_DATASETS = ("cardio", "breast_cancer", "diabetes", "wine", "digits", "penguins")
STUDY_OPTIMIZERS = OPTIMIZERS


class StudyDataset(Section):
    """`study.datasets.<name>:` how long and in which batches its networks train; `rows` keeps
    that many rows of the table (a stratified sample; null: all)."""

    epochs: PositiveInt
    batch_size: PositiveInt
    rows: PositiveInt | None = None


class StudyMethod(Section):
    """`study.methods.<name>:` an optimizer, a learning rate (a number, or `range_test`: the
    range test's constant suggestion, run with this optimizer) and a schedule; `triangular` and
    `one_cycle` take their bounds from the range test. `cycles` full triangles fill the run."""

    optimizer: Literal[STUDY_OPTIMIZERS]
    learning_rate: Number | Literal["range_test"] | None = None
    schedule: Literal["constant", "triangular", "one_cycle"] = "constant"
    cycles: PositiveInt = 2
    options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _rate(self) -> StudyMethod:
        if self.schedule == "constant" and self.learning_rate is None:
            raise ValueError("learning_rate: expected a number or range_test for a constant "
                             "schedule, got null")
        if self.schedule != "constant" and self.learning_rate is not None:
            raise ValueError(f"learning_rate: expected null for schedule {self.schedule} (its "
                             f"bounds come from the range test), got {_show(self.learning_rate)}")
        if isinstance(self.learning_rate, int | float) and not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected > 0, got {_show(self.learning_rate)}")
        return self

    @property
    def uses_range_test(self) -> bool:
        return self.learning_rate == "range_test" or self.schedule != "constant"


class StudyGrid(Section):
    """`study.grid.<optimizer>:` the tuned oracle's `points` log-spaced constant rates from
    `low` to `high` (the study's config has 8; tiny test configurations fewer), trained with
    `study.grid_seeds` seeds each; the best on validation is the oracle."""

    low: Number
    high: Number
    points: PositiveInt = 8

    @model_validator(mode="after")
    def _spaced(self) -> StudyGrid:
        if not 0 < self.low < self.high:
            raise ValueError(f"low: expected 0 < low < high ({_show(self.high)}), got "
                             f"{_show(self.low)}")
        if self.points < 2:
            raise ValueError(f"points: expected >= 2 (the oracle is a search), got "
                             f"{self.points}")
        return self

    def rates(self) -> list[float]:
        step = (math.log10(self.high) - math.log10(self.low)) / (self.points - 1)
        return [float(10 ** (math.log10(self.low) + i * step)) for i in range(self.points)]


class StudyParams(Section):
    """`study:` datasets x methods x seeds against a tuned oracle (see `clrpipe.study.core`)."""

    datasets: dict[Literal[STUDY_DATASETS], StudyDataset]
    methods: dict[str, StudyMethod]
    grid: dict[Literal["sgd", "adam"], StudyGrid]
    seeds: PositiveInt = 5
    grid_seeds: PositiveInt = 5
    first_seed: Integer = 0
    momentum: float = Field(default=0.0, ge=0, lt=1)
    tolerance: float = Field(default=0.01, ge=0)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    test_size: float = Field(default=0.2, gt=0, lt=1)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    split_seed: Integer = 42
    order_seed: Integer = 42
    steps_per_execution: PositiveInt = 64
    range_test: dict[Literal[STUDY_OPTIMIZERS], RangeTestParams] = {}
    ray: RayParams = RayParams()
    dev: list[Literal[STUDY_DATASETS]] = []
    test: list[Literal[STUDY_DATASETS]] = []

    @model_validator(mode="after")
    def _known(self) -> StudyParams:
        if not self.datasets or not self.methods:
            raise ValueError("datasets: expected at least one dataset and one method")
        self._check_sets()
        for name, method in self.methods.items():
            if name.startswith("oracle"):
                raise ValueError(f"methods: the name {name} is reserved for the tuned oracle")
            if method.uses_range_test and method.optimizer not in self.range_test:
                raise ValueError(f"range_test: expected a sweep for optimizer "
                                 f"{method.optimizer} (used by methods.{name}), got none")
        return self

    def _check_sets(self) -> None:
        """Every table in exactly one of `dev` (where the study's rules are chosen) and `test`
        (where they are reported), at least one in `dev`."""
        tables = ", ".join(self.datasets)
        for key, named in (("dev", self.dev), ("test", self.test)):
            for table in named:
                if table not in self.datasets:
                    raise ValueError(f"{key}: expected tables of study.datasets ({tables}), "
                                     f"got {table}")
                if named.count(table) > 1:
                    raise ValueError(f"{key}: expected each table once, got {table} twice")
        for table in self.test:
            if table in self.dev:
                raise ValueError(f"test: expected every table in exactly one of study.dev and "
                                 f"study.test, got {table} in both")
        if not self.dev:
            raise ValueError("dev: expected at least one development table, got none")
        missing = [t for t in self.datasets if t not in self.dev and t not in self.test]
        if missing:
            raise ValueError(f"dev: expected every table of study.datasets in study.dev or "
                             f"study.test, got {', '.join(missing)} in neither")

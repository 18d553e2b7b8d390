"""The library's config types: a schedule (`policy:` constant, cyclical or one-cycle) and the
range test's sweep and analysis, as frozen pydantic models whose errors are one line naming the
key (`parse`, `describe`). The pipeline's `params.yaml` sections (`clrpipe.pipeline.params`)
build on these; the library never imports the pipeline."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from clrpipe.errors import ClrpipeError


class Section(BaseModel):
    """Base of one section's model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("expected a number")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


Number = Annotated[int | float, BeforeValidator(_number)]
"""A finite int or float (not a bool, not a string), kept as given."""
Integer = Annotated[int, BeforeValidator(_integer)]


def _positive(value: Any) -> int | float:
    if _number(value) <= 0:
        raise ValueError("expected a number > 0")
    return value


Positive = Annotated[int | float, BeforeValidator(_positive)]
PositiveInt = Annotated[int, Field(gt=0), BeforeValidator(_integer)]


# --- schedule -------------------------------------------------------------------------------

POLICIES = ("constant", "triangular", "triangular2", "exp_range", "one_cycle")
CYCLICAL = ("triangular", "triangular2", "exp_range")


class _Schedule(Section):
    backend: Literal["keras", "tfa"] = "keras"


class ConstantSchedule(_Schedule):
    """`policy: constant`: one learning rate (null: the range test's suggestion)."""

    policy: Literal["constant"] = "constant"
    learning_rate: Positive | None = None


class CyclicalSchedule(_Schedule):
    """`policy: triangular | triangular2 | exp_range` (tfa's CyclicalLearningRate).

    Null learning rates come from the range test; the half cycle is `step_size` optimizer
    steps or `step_size_epochs` epochs, an epoch being ceil(rows / batch) steps with rows the
    training-set size or `iterations_rows` (70000 reproduces the article's miscount)."""

    policy: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    initial_learning_rate: Positive | None = None
    maximal_learning_rate: Positive | None = None
    step_size: Positive | None = None
    step_size_epochs: Positive | None = None
    iterations_rows: Positive | None = None
    scale_mode: Literal["cycle", "iterations"] | None = None
    gamma: Positive = 1.0

    @model_validator(mode="after")
    def _consistent(self) -> CyclicalSchedule:
        if self.step_size is not None and self.step_size_epochs is not None:
            raise ValueError("step_size: set either step_size or step_size_epochs, not both")
        if self.step_size is None and self.step_size_epochs is None:
            raise ValueError("step_size: expected a number > 0 (or step_size_epochs), got null")
        low, high = self.initial_learning_rate, self.maximal_learning_rate
        if low is not None and high is not None and high < low:
            raise ValueError(
                f"maximal_learning_rate: expected >= schedule.initial_learning_rate "
                f"({_show(low)}), got {_show(high)}"
            )
        if self.backend == "tfa" and self.policy != "triangular" and self.mode == "iterations":
            raise ValueError(
                f"scale_mode: tfa 0.23's {self.policy} crashes on the optimizer's int64 step "
                "with scale_mode iterations (tensorflow/addons PR #2756); use cycle or backend "
                "keras"
            )
        return self

    @property
    def mode(self) -> str:
        """`scale_mode`, defaulting as tfa does: iterations for exp_range, else cycle."""
        if self.scale_mode is not None:
            return self.scale_mode
        return "iterations" if self.policy == "exp_range" else "cycle"


class OneCycleSchedule(_Schedule):
    """`policy: one_cycle` (Smith 2018), optionally with momentum cycling 0.95 -> 0.85 -> 0.95.

    Its length is `total_steps` or `total_epochs`; both null means the whole run."""

    policy: Literal["one_cycle"] = "one_cycle"
    maximal_learning_rate: Positive | None = None
    total_steps: Positive | None = None
    total_epochs: Positive | None = None
    iterations_rows: Positive | None = None
    pct_start: Positive = 0.25
    div_factor: Positive = 25.0
    final_div_factor: Positive = 1e4
    anneal: Literal["cos", "linear"] = "cos"
    cycle_momentum: bool = False
    max_momentum: Number = 0.95
    base_momentum: Number = 0.85

    @model_validator(mode="after")
    def _consistent(self) -> OneCycleSchedule:
        if self.backend != "keras":
            raise ValueError(
                "backend: expected 'keras' for policy one_cycle (tfa has only cyclical ones), "
                f"got {self.backend!r}"
            )
        if self.total_steps is not None and self.total_epochs is not None:
            raise ValueError("total_steps: set either total_steps or total_epochs, not both")
        if not self.pct_start < 1:
            raise ValueError(
                f"pct_start: expected a number between 0 and 1 (exclusive), got {self.pct_start:g}"
            )
        if self.base_momentum < 0:
            raise ValueError(f"base_momentum: expected a number >= 0, got {self.base_momentum:g}")
        if not self.base_momentum <= self.max_momentum <= 1:
            raise ValueError(
                f"max_momentum: expected a number >= {self.base_momentum:g} (base_momentum) "
                f"and <= 1, got {self.max_momentum:g}"
            )
        return self


RATE_KEYS = {"initial_learning_rate": 0, "maximal_learning_rate": 1}
"""Schedule keys a null fills from the range test's (base_lr, max_lr), by index."""


def fill_bounds(spec, bounds: tuple[float, float] | None, where: str = "schedule"):
    """`spec` with its null CLR/one-cycle rates taken from the range test's (base_lr, max_lr),
    validated again (max >= initial). A null left that nothing can fill is an error naming it."""
    names = [n for n in RATE_KEYS if getattr(spec, n, 0) is None]
    if getattr(spec, "learning_rate", 0) is None:
        names = ["learning_rate"]  # a constant's rate: `compare` fills it, nothing else does
    if not names:
        return spec
    if bounds is None or names == ["learning_rate"]:
        raise ClrpipeError(
            f"{where}.{names[0]}: null means 'from the range test', but "
            "metrics/range_test.json was not found (run `clrpipe range-test` first or set a "
            "number)"
        )
    return schedule_spec(spec.model_dump() | {n: bounds[RATE_KEYS[n]] for n in names}, where)


def _policy(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("policy", "triangular")
    return getattr(value, "policy", None)


ScheduleParams = Annotated[
    Annotated[ConstantSchedule, Tag("constant")]
    | Annotated[CyclicalSchedule, Tag("triangular")]
    | Annotated[CyclicalSchedule, Tag("triangular2")]
    | Annotated[CyclicalSchedule, Tag("exp_range")]
    | Annotated[OneCycleSchedule, Tag("one_cycle")],
    Discriminator(_policy),
]
"""`schedule:` (and each `compare.methods.*.schedule`): the model is chosen by `policy`."""


# --- range test ---------------------------------------------------------------------------------

MIN_STEPS = 10


class RangeTestParams(Section):
    """`range_test:` the sweep (bounds, steps, seeds), its smoothing and divergence rule, and
    the stage's held-out slice and batch size (null: `train.clr.batch_size`)."""

    min_lr: Number = 1e-4
    max_lr: Number = 10.0
    num_steps: Integer = 400
    mode: Literal["linear", "exponential"] = "exponential"
    beta: Number = 0.98
    divergence_factor: Number = 4.0
    seeds: Integer = 3
    seed: Integer = 0
    val_every: Integer = 10
    smoothing: Literal["log", "linear"] = "log"
    validation_rows: Integer = 2000
    batch_size: PositiveInt | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RangeTestParams:
        checks = [
            ("min_lr", self.min_lr > 0, "expected > 0"),
            ("min_lr", self.min_lr < self.max_lr,
             f"expected < range_test.max_lr ({self.max_lr:g})"),
            ("num_steps", self.num_steps >= MIN_STEPS, f"expected >= {MIN_STEPS}"),
            ("beta", 0 < self.beta < 1, "expected 0 < beta < 1"),
            ("divergence_factor", self.divergence_factor > 1, "expected > 1"),
            ("seeds", self.seeds >= 1, "expected >= 1"),
            ("val_every", self.val_every >= 0, "expected >= 0 (0 = off)"),
            ("validation_rows", self.validation_rows >= 0, "expected >= 0 (0 = none)"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(f"{key}: {expected}, got {_show(getattr(self, key))}")
        return self

    def seed_list(self) -> list[int]:
        """The seeds of the sweeps: `seed`, `seed + 1`, ..., `seed + seeds - 1`."""
        return [self.seed + i for i in range(self.seeds)]


# --- errors ---------------------------------------------------------------------------------

ModelT = TypeVar("ModelT", bound=BaseModel)


def parse(model: type[ModelT], values: Any, where: str = "", prefix: str = "") -> ModelT:
    """`model` validated from `values`; a failure is one ClrpipeError line naming the dotted
    key under `where` (e.g. `range_test.min_lr: expected > 0, got 0`), after `prefix`."""
    try:
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model.model_validate(values)
        return TypeAdapter(model).validate_python(values)  # a union: ModelParams, DataParams
    except ValidationError as err:
        raise ClrpipeError(prefix + describe(err, where)) from None


def schedule_spec(values: Any, where: str = "schedule"):
    """A `schedule:`-style mapping validated into its policy's model; errors name the key
    under `where` (the mapping's dotted path, e.g. `compare.methods.one_cycle.schedule`)."""
    try:
        return _ScheduleHolder.model_validate({"schedule": values}).schedule
    except ValidationError as err:
        raise ClrpipeError(where + describe(err).removeprefix("schedule")) from None


class _ScheduleHolder(BaseModel):
    schedule: ScheduleParams


_UNION_TAGS = {"schedule": POLICIES, "data": ("cardio", "table"), "model": ("builtin", "custom")}
_UNION_KEYS = {"schedule": "policy", "data": "kind", "model": "_target_"}


def describe(err: ValidationError, where: str = "") -> str:
    """One line for the first error: `<where>.<dotted key>: <what was expected>, got <value>`."""
    first = err.errors()[0]
    loc, tag = [], None
    for part in map(str, first["loc"]):
        if loc and part in _UNION_TAGS.get(loc[-1], ()):
            tag = (_UNION_KEYS[loc[-1]], part)  # the union's tag, not a key the user wrote
        else:
            loc.append(part)
    message = first["msg"].removeprefix("Value error, ")
    kind = first["type"]
    if kind == "union_tag_invalid":
        key = _UNION_KEYS.get(loc[-1] if loc else "schedule", "policy")
        loc.append(key)
        tags = _UNION_TAGS.get(loc[-2] if len(loc) > 1 else "schedule", POLICIES)
        message = f"expected one of {', '.join(tags)}, got {first['ctx']['tag']!r}"
    elif kind == "extra_forbidden":
        message = "unknown key" + (f" for {tag[0]} {tag[1]}" if tag else "")
        if tag == ("_target_", "builtin"):
            message = "unknown key for the built-in model (set model._target_ to use your own)"
    elif kind == "union_tag_not_found":
        message = f"expected a mapping of keys with a policy, got {_show(first.get('input'))}"
    elif kind == "missing":
        message = "required"
    elif kind == "literal_error":
        message = f"expected one of {first['ctx']['expected'].replace(' or ', ', ')}"
    named = re.match(r"([a-z_][a-z0-9_]*): (.*)", message)
    if kind == "value_error" and named:
        loc.append(named[1])
        message = named[2]
    whole = isinstance(first.get("input"), dict)  # a model-level check names its own key
    if "got " not in message and not whole and kind not in ("missing", "extra_forbidden"):
        message = f"{message[0].lower()}{message[1:]}, got {_show(first.get('input'))}"
    key = ".".join(part for part in (where, *loc) if part)
    return f"{key}: {message}" if key else message

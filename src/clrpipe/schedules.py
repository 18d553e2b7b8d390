"""Learning-rate schedules: cyclical (TensorFlow Addons 0.23 compatible), one-cycle and constant.

Every run trains through a `keras.optimizers.schedules.LearningRateSchedule`, even the
constant-LR baseline, so saving, resuming and logging take one code path. All schedules are
registered Keras objects: a model saved with `model.save("x.keras")` loads back with its
schedule, and training resumes at the restored `optimizer.iterations`.

`CyclicalLearningRate` reproduces `tfa.optimizers.CyclicalLearningRate` (tensorflow-addons
0.23.0) value for value, but picks its scale function by name instead of storing a callable
(tfa's stored lambda made saved models unloadable, tensorflow/addons#2380) and accepts int32
and int64 step counters (tfa's triangular2/exp_range crash on an int64 step, PR #2756).

`build_schedule` turns a `schedule:` section (validated by `clrpipe.settings.ScheduleParams`)
into a schedule, filling null learning rates from the range test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import keras
from keras import ops

from clrpipe import keras_private, settings
from clrpipe.errors import ClrpipeError
from clrpipe.settings import (
    ConstantSchedule,
    CyclicalSchedule,
    OneCycleSchedule,
    ScheduleParams,
)

__all__ = [
    "ConstantLearningRate",
    "CyclicalLearningRate",
    "OneCycleLearningRate",
    "OneCycleMomentum",
    "ScheduledMomentumSGD",
    "build_schedule",
    "build_sgd",
]

LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule

POLICIES = settings.CYCLICAL
SCALE_MODES = ("cycle", "iterations")
ANNEALS = ("cos", "linear")


def _scale(policy: str, m, gamma: float, dtype: str):
    """Amplitude factor of a CLR policy at `m` (the cycle number or the raw step)."""
    if policy == "triangular":
        return 1.0
    if policy == "triangular2":
        return 1.0 / ops.power(ops.convert_to_tensor(2.0, dtype), m - 1.0)
    return ops.power(ops.convert_to_tensor(gamma, dtype), m)


@keras.saving.register_keras_serializable(package="clrpipe")
class CyclicalLearningRate(LearningRateSchedule):
    """Cyclical learning rate (Smith 2017), numerically the same as tfa 0.23.

    ```
    cycle = floor(1 + step / (2 * step_size))
    x     = |step / step_size - 2 * cycle + 1|
    lr    = initial + (maximal - initial) * max(0, 1 - x) * scale_fn(m)
    ```
    with `m = cycle` for `scale_mode="cycle"` and `m = step` for `"iterations"`, and
    `scale_fn` chosen by `policy`: `"triangular"` 1, `"triangular2"` 1 / 2**(m - 1),
    `"exp_range"` gamma**m. The arithmetic runs in the dtype of `initial_learning_rate`
    (float32), like tfa. In `"iterations"` mode tfa applies `scale_fn` to the step exactly as
    passed in, i.e. to a Python number, in double precision; so does this class (float64,
    then cast), which also keeps gamma**step accurate over thousands of steps.

    `step_size` counts optimizer steps (batches) per half cycle; Smith suggests 2-10 epochs'
    worth of iterations.

    ```python
    schedule = CyclicalLearningRate(1e-4, 1e-2, step_size=320, policy="triangular2")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    ```
    """

    def __init__(
        self,
        initial_learning_rate: float,
        maximal_learning_rate: float,
        step_size: float,
        scale_mode: str | None = None,
        policy: str = "triangular",
        gamma: float = 1.0,
        name: str = "CyclicalLearningRate",
    ):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
        if scale_mode is None:
            scale_mode = "iterations" if policy == "exp_range" else "cycle"
        if scale_mode not in SCALE_MODES:
            raise ValueError(
                f"scale_mode: expected one of {', '.join(SCALE_MODES)}, got {scale_mode!r}"
            )
        if step_size <= 0:
            raise ValueError(f"step_size: expected > 0, got {step_size!r}")
        self.initial_learning_rate = initial_learning_rate
        self.maximal_learning_rate = maximal_learning_rate
        self.step_size = step_size
        self.scale_mode = scale_mode
        self.policy = policy
        self.gamma = gamma
        self.name = name

    def __call__(self, step):
        with keras.name_scope(self.name):
            initial = ops.convert_to_tensor(self.initial_learning_rate)
            dtype = initial.dtype
            maximal = ops.cast(self.maximal_learning_rate, dtype)
            step_size = ops.cast(self.step_size, dtype)
            step_f = ops.cast(step, dtype)
            cycle = ops.floor(1 + step_f / (2 * step_size))
            x = ops.abs(step_f / step_size - 2 * cycle + 1)
            if self.scale_mode == "cycle":
                scale = _scale(self.policy, cycle, self.gamma, dtype)
            else:
                raw = ops.cast(step, "float64")
                scale = ops.cast(_scale(self.policy, raw, self.gamma, "float64"), dtype)
            return initial + (maximal - initial) * ops.maximum(ops.cast(0, dtype), 1 - x) * scale

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "maximal_learning_rate": self.maximal_learning_rate,
            "step_size": self.step_size,
            "scale_mode": self.scale_mode,
            "policy": self.policy,
            "gamma": self.gamma,
            "name": self.name,
        }


def _lin(start, end, pos):
    """Linear interpolation from `start` (pos 0) to `end` (pos 1), as fastai's `sched_lin`."""
    return start + (end - start) * pos


def _cos(start, end, pos):
    """Half-cosine from `start` (pos 0) to `end` (pos 1), as fastai's `sched_cos`."""
    return start + (end - start) * (1 - ops.cos(math.pi * pos)) / 2


_ANNEAL: dict[str, Callable] = {"cos": _cos, "linear": _lin}


def _two_phase(step, total_steps, pct_start, start, mid, end, anneal: str, dtype):
    """`start` -> `mid` over the first `pct_start` of `total_steps`, then `mid` -> `end`."""
    fn = _ANNEAL[anneal]
    pos = ops.clip(ops.cast(step, dtype) / ops.cast(total_steps, dtype), 0.0, 1.0)
    warm = fn(start, mid, ops.minimum(pos / pct_start, 1.0))
    down = fn(mid, end, ops.maximum(pos - pct_start, 0.0) / (1.0 - pct_start))
    return ops.where(pos < pct_start, warm, ops.where(pos < 1.0, down, end))


def _check_one_cycle(total_steps, pct_start, anneal) -> None:
    if total_steps <= 0:
        raise ValueError(f"total_steps: expected > 0, got {total_steps!r}")
    if not 0 < pct_start < 1:
        raise ValueError(f"pct_start: expected 0 < pct_start < 1, got {pct_start!r}")
    if anneal not in ANNEALS:
        raise ValueError(f"anneal: expected one of {', '.join(ANNEALS)}, got {anneal!r}")


@keras.saving.register_keras_serializable(package="clrpipe")
class OneCycleLearningRate(LearningRateSchedule):
    """One-cycle policy (Smith 2018; fastai `fit_one_cycle`, PyTorch `OneCycleLR`).

    ```
    start = maximal / div_factor;  end = start / final_div_factor;  pos = step / total_steps
    lr = anneal(start, maximal, pos / pct_start)                       if pos <  pct_start
         anneal(maximal, end, (pos - pct_start) / (1 - pct_start))     otherwise
    ```
    `anneal` is `"cos"` (half cosine) or `"linear"`; after `total_steps` the rate stays at
    `end`, far below `start`, which is the point of the last phase.

    ```python
    schedule = OneCycleLearningRate(1e-2, total_steps=160 * 50)
    ```
    """

    def __init__(
        self,
        maximal_learning_rate: float,
        total_steps: int,
        pct_start: float = 0.25,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        anneal: str = "cos",
        name: str = "OneCycleLearningRate",
    ):
        super().__init__()
        _check_one_cycle(total_steps, pct_start, anneal)
        self.maximal_learning_rate = maximal_learning_rate
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.anneal = anneal
        self.name = name

    @property
    def initial_learning_rate(self) -> float:
        return self.maximal_learning_rate / self.div_factor

    @property
    def final_learning_rate(self) -> float:
        return self.initial_learning_rate / self.final_div_factor

    def __call__(self, step):
        with keras.name_scope(self.name):
            dtype = ops.convert_to_tensor(self.maximal_learning_rate).dtype
            return _two_phase(
                step,
                self.total_steps,
                self.pct_start,
                ops.cast(self.initial_learning_rate, dtype),
                ops.cast(self.maximal_learning_rate, dtype),
                ops.cast(self.final_learning_rate, dtype),
                self.anneal,
                dtype,
            )

    def get_config(self) -> dict[str, Any]:
        return {
            "maximal_learning_rate": self.maximal_learning_rate,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "anneal": self.anneal,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="clrpipe")
class OneCycleMomentum(LearningRateSchedule):
    """Momentum mirrored to a one-cycle LR: `max_momentum` -> `base_momentum` -> `max_momentum`.

    High momentum while the LR is low, low while it peaks (Smith 2018, 0.95 -> 0.85 -> 0.95),
    on the same steps as the LR. Use it with `ScheduledMomentumSGD`.

    ```python
    lr = OneCycleLearningRate(1e-2, total_steps=8000)
    opt = ScheduledMomentumSGD(lr, OneCycleMomentum.like(lr))
    ```
    """

    def __init__(
        self,
        total_steps: int,
        pct_start: float = 0.25,
        max_momentum: float = 0.95,
        base_momentum: float = 0.85,
        anneal: str = "cos",
        name: str = "OneCycleMomentum",
    ):
        super().__init__()
        _check_one_cycle(total_steps, pct_start, anneal)
        if not 0 <= base_momentum <= max_momentum <= 1:
            raise ValueError(
                "expected 0 <= base_momentum <= max_momentum <= 1, "
                f"got {base_momentum!r} and {max_momentum!r}"
            )
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.max_momentum = max_momentum
        self.base_momentum = base_momentum
        self.anneal = anneal
        self.name = name

    @classmethod
    def like(cls, lr: OneCycleLearningRate, max_momentum=0.95, base_momentum=0.85):
        """The momentum schedule in step with the one-cycle LR schedule `lr`."""
        return cls(lr.total_steps, lr.pct_start, max_momentum, base_momentum, lr.anneal)

    def __call__(self, step):
        with keras.name_scope(self.name):
            hi = ops.convert_to_tensor(self.max_momentum)
            lo = ops.cast(self.base_momentum, hi.dtype)
            return _two_phase(
                step, self.total_steps, self.pct_start, hi, lo, hi, self.anneal, hi.dtype
            )

    def get_config(self) -> dict[str, Any]:
        return {
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "max_momentum": self.max_momentum,
            "base_momentum": self.base_momentum,
            "anneal": self.anneal,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="clrpipe")
class ScheduledMomentumSGD(keras.optimizers.SGD):
    """SGD whose momentum follows a schedule of `optimizer.iterations`, like its learning rate.

    Keras's SGD reads `momentum` as a Python float when the train step is traced, so a
    callback that changes it between batches has no effect; this optimizer evaluates
    `momentum_schedule(iterations)` inside the step instead, and so also resumes correctly.
    """

    def __init__(self, learning_rate, momentum_schedule, nesterov=False, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=1.0, nesterov=nesterov, **kwargs)
        self.momentum_schedule = momentum_schedule

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.momentum_schedule(self.iterations), variable.dtype)
        m = keras_private.slot(self, self.momentums, variable)
        step = ops.multiply(gradient, learning_rate)
        self.assign(m, ops.subtract(ops.multiply(m, momentum), step))
        if self.nesterov:
            self.assign_add(variable, ops.subtract(ops.multiply(m, momentum), step))
        else:
            self.assign_add(variable, m)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("momentum")
        config["momentum_schedule"] = keras.saving.serialize_keras_object(self.momentum_schedule)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["momentum_schedule"] = keras.saving.deserialize_keras_object(
            config["momentum_schedule"], custom_objects=custom_objects
        )
        return super().from_config(config, custom_objects=custom_objects)


@keras.saving.register_keras_serializable(package="clrpipe")
class ConstantLearningRate(LearningRateSchedule):
    """A fixed learning rate, as a schedule, so that the baseline shares the CLR code path.

    ```python
    keras.optimizers.SGD(learning_rate=ConstantLearningRate(0.01))
    ```
    """

    def __init__(self, learning_rate: float, name: str = "ConstantLearningRate"):
        super().__init__()
        self.learning_rate = learning_rate
        self.name = name

    def __call__(self, step):
        with keras.name_scope(self.name):
            lr = ops.convert_to_tensor(self.learning_rate)
            return ops.zeros_like(ops.cast(step, lr.dtype)) + lr

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "name": self.name}


# --- from configuration ---------------------------------------------------------------------


def build_schedule(
    spec: ScheduleParams | Mapping,
    train_rows: int,
    batch_size: int,
    *,
    bounds: tuple[float, float] | None = None,
    epochs: int | None = None,
    where: str = "schedule",
) -> LearningRateSchedule:
    """The schedule a `schedule:` section describes (a `settings.ScheduleParams`, or a mapping
    validated into one), for a run of `train_rows` rows at `batch_size`.

    Iterations per epoch are ceil(train_rows / batch_size) unless `iterations_rows` overrides
    the row count (70000 reproduces the article's 200 steps per epoch instead of the correct
    160). `bounds` = (base, max) from the range test fills learning rates left null; `epochs`
    (the run's length) sizes a one-cycle schedule whose `total_steps`/`total_epochs` are null.
    A bad value raises a one-line `ClrpipeError` naming the key under `where`.
    """
    if not isinstance(spec, ConstantSchedule | CyclicalSchedule | OneCycleSchedule):
        spec = settings.schedule_spec(dict(spec) if isinstance(spec, Mapping) else spec, where)
    if isinstance(train_rows, bool) or not isinstance(train_rows, int) or train_rows <= 0:
        raise ClrpipeError(f"train_rows: expected a positive integer, got {train_rows!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ClrpipeError(f"batch_size: expected a positive integer, got {batch_size!r}")
    spec = settings.fill_bounds(spec, bounds, where)
    if isinstance(spec, ConstantSchedule):
        return ConstantLearningRate(spec.learning_rate)
    rows = train_rows if spec.iterations_rows is None else spec.iterations_rows
    per_epoch = math.ceil(rows / batch_size)
    if isinstance(spec, OneCycleSchedule):
        total = spec.total_steps or _epochs_to_steps(spec.total_epochs, per_epoch)
        if total is None:
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
                raise ClrpipeError(f"epochs: expected a positive integer, got {epochs!r}")
            total = epochs * per_epoch
        return OneCycleLearningRate(spec.maximal_learning_rate, total, spec.pct_start,
                                    spec.div_factor, spec.final_div_factor, spec.anneal)
    step_size = spec.step_size or _epochs_to_steps(spec.step_size_epochs, per_epoch)
    return CyclicalLearningRate(spec.initial_learning_rate, spec.maximal_learning_rate, step_size,
                                spec.mode, spec.policy, spec.gamma)


def _epochs_to_steps(epochs: float | None, per_epoch: int) -> float | None:
    if epochs is None:
        return None
    steps = epochs * per_epoch
    return int(steps) if float(steps).is_integer() else steps


def build_sgd(schedule: LearningRateSchedule, spec: ScheduleParams | None = None,
              momentum: float = 0.0) -> keras.Optimizer:
    """SGD on `schedule` (with `momentum`), or `ScheduledMomentumSGD` when a one-cycle spec
    asks for momentum cycling."""
    if (isinstance(spec, OneCycleSchedule) and spec.cycle_momentum
            and isinstance(schedule, OneCycleLearningRate)):
        cycled = OneCycleMomentum.like(schedule, spec.max_momentum, spec.base_momentum)
        return ScheduledMomentumSGD(schedule, cycled)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=momentum)

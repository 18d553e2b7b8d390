"""Learning-rate schedules: cyclical (TensorFlow Addons 0.23 compatible), one-cycle and constant.

Every run trains through a `keras.optimizers.schedules.LearningRateSchedule`, even the
constant-LR baseline, so saving, resuming and logging take one code path. All schedules are
registered Keras objects: a model saved with `model.save("x.keras")` loads back with its
schedule, and training resumes at the restored `optimizer.iterations`.

`CyclicalLearningRate` reproduces `tfa.optimizers.CyclicalLearningRate` (tensorflow-addons
0.23.0) value for value, but picks its scale function by name instead of storing a callable
(tfa's stored lambda made saved models unloadable, tensorflow/addons#2380) and accepts int32
and int64 step counters (tfa's triangular2/exp_range crash on an int64 step, PR #2756).

`build_schedule` turns the `schedule:` section of `params.yaml` into a schedule and rejects a
bad section with a one-line `ClrpipeError` naming the key, before any training starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import keras
from keras import ops

from clrpipe.errors import ClrpipeError

LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule

POLICIES = ("triangular", "triangular2", "exp_range")
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
        m = self.momentums[self._get_variable_index(variable)]
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


# --- configuration -------------------------------------------------------------------------

SECTION = "schedule"
BACKENDS = ("keras", "tfa")
_CYCLICAL_KEYS = {
    "initial_learning_rate": None,
    "maximal_learning_rate": None,
    "step_size": None,
    "step_size_epochs": None,
    "iterations_rows": None,
    "scale_mode": None,
    "gamma": 1.0,
}
KEYS: dict[str, dict[str, Any]] = {
    "constant": {"learning_rate": None},
    **{policy: _CYCLICAL_KEYS for policy in POLICIES},
    "one_cycle": {
        "maximal_learning_rate": None,
        "total_steps": None,
        "total_epochs": None,
        "iterations_rows": None,
        "pct_start": 0.25,
        "div_factor": 25.0,
        "final_div_factor": 1e4,
        "anneal": "cos",
        "cycle_momentum": False,
        "max_momentum": 0.95,
        "base_momentum": 0.85,
    },
}
"""Keys each policy accepts besides `policy` and `backend`, with their defaults."""


def _fail(key: str, expected: str, got: Any) -> ClrpipeError:
    return ClrpipeError(f"{SECTION}.{key}: expected {expected}, got {_show(got)}")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def _number(cfg: Mapping, key: str, *, low: float | None = None, strict: bool = True) -> float:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(key, "a number", value)
    if low is not None and (value <= low if strict else value < low):
        raise _fail(key, f"a number {'>' if strict else '>='} {low:g}", value)
    return value


def _choice(cfg: Mapping, key: str, choices: tuple[str, ...]) -> str:
    if cfg[key] not in choices:
        raise _fail(key, f"one of {', '.join(choices)}", cfg[key])
    return cfg[key]


def _steps_per_epoch(cfg: Mapping, train_rows: int, batch_size: int) -> int:
    """ceil(rows / batch), rows being the real training-set size unless `iterations_rows` set."""
    rows = train_rows if cfg["iterations_rows"] is None else _number(cfg, "iterations_rows", low=0)
    return math.ceil(rows / batch_size)


def _steps(cfg: Mapping, key: str, epochs_key: str, per_epoch: int, fallback=None) -> float:
    """A step count given either directly (`key`) or in epochs (`epochs_key`)."""
    if cfg[key] is not None and cfg[epochs_key] is not None:
        raise ClrpipeError(f"{SECTION}.{key}: set either {key} or {epochs_key}, not both")
    if cfg[key] is not None:
        return _number(cfg, key, low=0)
    if cfg[epochs_key] is not None:
        steps = _number(cfg, epochs_key, low=0) * per_epoch
        return int(steps) if float(steps).is_integer() else steps
    if fallback is not None:
        if isinstance(fallback, bool) or not isinstance(fallback, int) or fallback <= 0:
            raise ClrpipeError(f"epochs: expected a positive integer, got {fallback!r}")
        return fallback * per_epoch
    raise _fail(key, f"a number > 0 (or {epochs_key})", None)


def _rate(cfg: Mapping, key: str, bound: float | None) -> float:
    """A learning rate from the config, or from the range test's `bound` when it is null."""
    if cfg[key] is None:
        if bound is None:
            raise ClrpipeError(
                f"{SECTION}.{key}: null means 'from the range test', but no range-test "
                "bounds were given (run the range-test stage first or set a number)"
            )
        return bound
    return _number(cfg, key, low=0)


def read_config(cfg: Mapping) -> dict[str, Any]:
    """The schedule section with defaults filled in; unknown keys and policies are errors."""
    if not isinstance(cfg, Mapping):
        raise ClrpipeError(f"{SECTION}: expected a mapping of keys, got {_show(cfg)}")
    cfg = dict(cfg.items())
    policy = cfg.pop("policy", "triangular")
    if policy not in KEYS:
        raise _fail("policy", f"one of {', '.join(KEYS)}", policy)
    backend = cfg.pop("backend", "keras")
    if backend not in BACKENDS:
        raise _fail("backend", f"one of {', '.join(BACKENDS)}", backend)
    for key in cfg:
        if key not in KEYS[policy]:
            raise ClrpipeError(
                f"{SECTION}.{key}: unknown key for policy {policy}; "
                f"expected one of {', '.join(['policy', 'backend', *KEYS[policy]])}"
            )
    return {"policy": policy, "backend": backend, **KEYS[policy], **cfg}


def build_schedule(
    cfg: Mapping,
    train_rows: int,
    batch_size: int,
    *,
    bounds: tuple[float, float] | None = None,
    epochs: int | None = None,
) -> LearningRateSchedule:
    """Build the schedule described by the `schedule:` config section.

    `train_rows` is the real training-set size; iterations per epoch are
    ceil(train_rows / batch_size) unless `iterations_rows` overrides the row count (70000
    reproduces the article's 200 steps per epoch instead of the correct 160). `bounds` =
    (base, max) from the range test fills learning rates left null; `epochs` (the run's
    length) sizes a one-cycle schedule whose `total_steps`/`total_epochs` are null.
    Any invalid key raises a one-line `ClrpipeError` naming it.
    """
    c = read_config(cfg)
    if isinstance(train_rows, bool) or not isinstance(train_rows, int) or train_rows <= 0:
        raise ClrpipeError(f"train_rows: expected a positive integer, got {train_rows!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ClrpipeError(f"batch_size: expected a positive integer, got {batch_size!r}")
    base, peak = bounds if bounds is not None else (None, None)
    policy = c["policy"]
    if c["backend"] == "tfa" and policy not in POLICIES:
        raise _fail("backend", f"'keras' for policy {policy} (tfa has only cyclical ones)", "tfa")

    if policy == "constant":
        return ConstantLearningRate(_number(c, "learning_rate", low=0))

    per_epoch = _steps_per_epoch(c, train_rows, batch_size)
    if policy == "one_cycle":
        total = _steps(c, "total_steps", "total_epochs", per_epoch, fallback=epochs)
        pct_start = _number(c, "pct_start", low=0)
        if pct_start >= 1:
            raise _fail("pct_start", "a number between 0 and 1 (exclusive)", pct_start)
        _number(c, "div_factor", low=0)
        _number(c, "final_div_factor", low=0)
        _choice(c, "anneal", ANNEALS)
        if not isinstance(c["cycle_momentum"], bool):
            raise _fail("cycle_momentum", "true or false", c["cycle_momentum"])
        low = _number(c, "base_momentum", low=0, strict=False)
        if _number(c, "max_momentum", low=low, strict=False) > 1:
            raise _fail("max_momentum", "a number <= 1", c["max_momentum"])
        return OneCycleLearningRate(
            _rate(c, "maximal_learning_rate", peak),
            total,
            pct_start,
            c["div_factor"],
            c["final_div_factor"],
            c["anneal"],
        )

    initial = _rate(c, "initial_learning_rate", base)
    maximal = _rate(c, "maximal_learning_rate", peak)
    if maximal < initial:
        raise ClrpipeError(
            f"{SECTION}.maximal_learning_rate: expected >= {SECTION}.initial_learning_rate "
            f"({_show(initial)}), got {_show(maximal)}"
        )
    step_size = _steps(c, "step_size", "step_size_epochs", per_epoch)
    scale_mode = c["scale_mode"]
    if scale_mode is None:
        scale_mode = "iterations" if policy == "exp_range" else "cycle"
    _choice({"scale_mode": scale_mode}, "scale_mode", SCALE_MODES)
    gamma = _number(c, "gamma", low=0)
    if c["backend"] == "tfa" and policy != "triangular" and scale_mode == "iterations":
        raise ClrpipeError(
            f"{SECTION}.scale_mode: tfa 0.23's {policy} crashes on the optimizer's int64 step "
            "with scale_mode iterations (tensorflow/addons PR #2756); use cycle or backend keras"
        )
    return CyclicalLearningRate(initial, maximal, step_size, scale_mode, policy, gamma)


def build_sgd(schedule: LearningRateSchedule, cfg: Mapping | None = None) -> keras.Optimizer:
    """Plain SGD on `schedule`, or `ScheduledMomentumSGD` when a one-cycle config asks for it."""
    c = read_config(cfg) if cfg is not None else {"cycle_momentum": False}
    if c.get("cycle_momentum") and isinstance(schedule, OneCycleLearningRate):
        momentum = OneCycleMomentum.like(schedule, c["max_momentum"], c["base_momentum"])
        return ScheduledMomentumSGD(schedule, momentum)
    return keras.optimizers.SGD(learning_rate=schedule)

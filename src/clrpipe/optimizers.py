"""The optimizers of the study, built by name, and the weights each one evaluates with (pure).

`build_optimizer` is the one place they are made: SGD and Adam (Keras's), AdamW with an EMA of
the weights and Muon (Keras's, set up as yandex-research/tabular-dl-optimizers sets them up),
and two ports of PyTorch references, each checked against its package in
`tests/test_optimizers_parity.py`:

- `ScheduleFreeAdamW`: `schedulefree.AdamWScheduleFree` (1.4.1). Keras 3.15's class of that
  name recovers x with the already updated z (it reads `momentum.value` after `assign_sub`),
  averages iterates with weight 1/t and decays y with the raw learning rate before the step;
  the reference weights iterate t by lr_max_t ** `weight_lr_power` (lr_max_t the largest
  warmed-up rate so far) and adds the decay to the normalised gradient at y.
- `Prodigy`: `prodigyopt.Prodigy` (1.1.2). Its step size d needs a sum over all variables
  before any update, so it overrides `apply`; it keeps one d per group of `group_of`.

Several networks can share one Keras model (the study packs a method's seeds into one model).
Per-variable optimizers then move each network as if it trained alone; `group_of(variable)`
gives the optimizers with a per-step quantity over variables (Prodigy's d) one state per group.

`evaluation_weights(model, optimizer)` swaps in the weights to score (schedule-free: the average
x; EMA: the moving average) and back; `finalize` leaves them in, for saving.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import keras
from keras import ops

from clrpipe import keras_private
from clrpipe.errors import ClrpipeError

__all__ = [
    "NAMES",
    "Prodigy",
    "ScheduleFreeAdamW",
    "build_optimizer",
    "evaluation_weights",
    "finalize",
    "muon_exclusions",
    "resume",
]

NAMES = ("sgd", "adam", "adamw_ema", "muon", "schedule_free_adamw", "prodigy")

GroupOf = Callable[[Any], Hashable]


def build_optimizer(name: str, learning_rate, *, momentum: float = 0.0,
                    weight_decay: float | None = None, group_of: GroupOf | None = None,
                    **options) -> keras.Optimizer:
    """The optimizer `name` (one of `NAMES`) on `learning_rate` (a float or a Keras
    `LearningRateSchedule`); `options` go to its class.

    `momentum` is SGD's (the adaptive ones have their betas). `weight_decay=None` keeps each
    class's default: none for sgd, adam, schedule_free_adamw and prodigy (the references'),
    Keras's 0.004 for adamw_ema and muon. adamw_ema and muon leave biases undecayed, as the
    benchmark does. `group_of(variable)` names the network a variable belongs to; only Prodigy
    couples variables, so only Prodigy uses it. muon needs `exclude_layers` (the output
    layers: `muon_exclusions(model)`).
    """
    learning_rate = _rate(learning_rate)
    decay = {} if weight_decay is None else {"weight_decay": float(weight_decay)}
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, **decay, **options)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, **decay, **options)
    if name == "adamw_ema":
        optimizer = keras.optimizers.AdamW(learning_rate, **decay, use_ema=True, **options)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        return optimizer
    if name == "muon":
        if "exclude_layers" not in options:
            raise ClrpipeError("optimizer muon: pass exclude_layers=muon_exclusions(model) "
                               "(its output layers must use the AdamW fallback)")
        if weight_decay is not None:
            decay["adam_weight_decay"] = float(weight_decay)
        optimizer = keras.optimizers.Muon(learning_rate, **decay, **options)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        return optimizer
    if name == "schedule_free_adamw":
        return ScheduleFreeAdamW(learning_rate, **decay, **options)
    if name == "prodigy":
        return Prodigy(learning_rate, **decay, group_of=group_of, **options)
    raise ClrpipeError(f"optimizer {name!r}: expected one of {', '.join(NAMES)}")


def _rate(learning_rate):
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return learning_rate
    return float(learning_rate)


def muon_exclusions(model: keras.Model, group_of: GroupOf | None = None) -> list[str]:
    """Patterns for Muon's `exclude_layers`: each network's output layer (the last layer with
    a kernel, per group of `group_of`: pass it for a packed model) and any layer whose kernel
    has a side of 1, the matrices the benchmark leaves to AdamW."""
    last: dict[Hashable, str] = {}
    thin: list[str] = []
    for layer in model.layers:
        kernels = [v for v in layer.trainable_weights if len(v.shape) == 2]
        if not kernels:
            continue
        last[group_of(kernels[0]) if group_of else None] = layer.name
        if any(1 in v.shape for v in kernels):
            thin.append(layer.name)
    names = dict.fromkeys([*last.values(), *thin])
    return [f"(^|/){re.escape(name)}/" for name in names]


@keras.saving.register_keras_serializable(package="clrpipe")
class ScheduleFreeAdamW(keras.optimizers.Optimizer):
    """Schedule-free AdamW as `schedulefree.AdamWScheduleFree` (1.4.1) computes it.

    Per step t (from 1) with lr_t = lr * min(t / warmup_steps, 1), lr_max = max over steps of
    lr_t, c_t = lr_max ** weight_lr_power * t ** r / (sum of those weights so far):

        v = beta_2 v + (1 - beta_2) g²;   u = g / (sqrt(v / (1 - beta_2^t)) + epsilon) + wd y
        y = lerp(y, z, c_t) + lr_t (beta_1 (1 - c_t) - 1) u;   z = z - lr_t u

    The model holds y (where gradients are taken); the weights to evaluate are
    x = lerp(y, z, 1 - 1/beta_1). `finalize_variable_values` (called at the end of
    `training.fit` and Keras's `fit`) puts x in; `restore_iterate` (called at the start of
    `training.fit`) puts y back, as the reference's `train()` does. Weight decay is this
    rule's (`weight_decay`), not Keras's.
    """

    def __init__(self, learning_rate=0.0025, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay=0.0, warmup_steps=0, r=0.0, weight_lr_power=2.0, name=None,
                 **kwargs):
        _refuse("ScheduleFreeAdamW", kwargs, ("use_ema", "gradient_accumulation_steps"))
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.decay = float(weight_decay or 0.0)
        self.warmup_steps = int(warmup_steps)
        self.r = r
        self.weight_lr_power = weight_lr_power

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.z, self.exp_avg_sq = self.add_optimizer_variables(var_list, ["z", "exp_avg_sq"])
        scalar = {"shape": (), "dtype": "float64"}
        self.lr_max = self.add_variable(**scalar, initializer=keras.initializers.Constant(-1.0),
                                        name="lr_max")
        self.weight_sum = self.add_variable(**scalar, name="weight_sum")
        self.step_lr = self.add_variable(**scalar, name="step_lr")
        self.ckp1 = self.add_variable(**scalar, name="ckp1")
        self.evaluating = self.add_variable((), dtype="int32", name="evaluating")

    def apply(self, grads, trainable_variables=None):
        """The step's rate and averaging weight (once for all variables), then Keras's apply."""
        variables = list(keras_private.built_variables(self) if trainable_variables is None
                         else trainable_variables)
        if not self.built:
            self.build(variables)
        self._back_to_y(variables)
        k = ops.cast(self.iterations, "float64")
        lr = ops.cast(self.learning_rate, "float64")
        if self.warmup_steps > 0:
            lr = lr * ops.minimum((k + 1.0) / self.warmup_steps, 1.0)
        lr_max = ops.maximum(lr, self.lr_max)
        weight = ops.power(k + 1.0, self.r) * ops.power(lr_max, self.weight_lr_power)
        weight_sum = self.weight_sum + weight
        self.lr_max.assign(lr_max)
        self.weight_sum.assign(weight_sum)
        self.step_lr.assign(lr)
        self.ckp1.assign(ops.where(weight_sum > 0, weight / ops.maximum(weight_sum, 1e-300), 0.0))
        return super().apply(grads, trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        z = keras_private.slot(self, self.z, variable)
        v = keras_private.slot(self, self.exp_avg_sq, variable)
        gradient = ops.cast(gradient, dtype)
        first = ops.equal(self.iterations, 0)
        self.assign(z, ops.where(first, ops.convert_to_tensor(variable), ops.convert_to_tensor(z)))
        k = ops.cast(self.iterations, "float64")
        correction = ops.cast(1.0 - ops.power(ops.cast(self.beta_2, "float64"), k + 1.0), dtype)
        self.assign(v, _addcmul(ops.multiply(v, self.beta_2), gradient, gradient,
                                1 - self.beta_2))
        denom = ops.add(ops.sqrt(ops.divide(v, correction)), self.epsilon)
        u = ops.divide(gradient, denom)
        if self.decay:
            u = ops.add(u, ops.multiply(variable, self.decay))
        ckp1 = self.ckp1
        lr = self.step_lr
        y = _lerp(variable, z, ckp1)
        y = ops.add(y, ops.multiply(u, ops.cast(lr * (self.beta_1 * (1.0 - ckp1) - 1.0), dtype)))
        self.assign(variable, y)
        self.assign_sub(z, ops.multiply(u, ops.cast(lr, dtype)))

    def average(self, variable):
        """x, the weights to evaluate, from the model's y and the optimizer's z."""
        z = keras_private.slot(self, self.z, variable)
        return _lerp(variable, z, 1.0 - 1.0 / self.beta_1)

    def finalize_variable_values(self, var_list):
        """Put the average x into the model (once; the next step restores y)."""
        super().finalize_variable_values(var_list)
        if not self.built or _read(self.iterations) == 0 or _read(self.evaluating):
            return
        for variable in var_list:
            variable.assign(self.average(variable))
        self.evaluating.assign(1)

    def restore_iterate(self, var_list):
        """Put y back after `finalize_variable_values` (the reference's `train()`); call it
        before the next gradient, which must be taken at y (`training.fit` does)."""
        if self.built and _read(self.evaluating):
            self._back_to_y(var_list)

    def _back_to_y(self, variables):
        """If x is in the model (after `finalize_variable_values`), restore y = lerp(x, z,
        1 - beta_1). `apply` does it too, for loops that do not call `restore_iterate`: then
        only that step's gradient was taken at x.

        A per-variable `where`, not `ops.cond`: assignments inside a branch of JAX's
        `lax.cond` leak tracers out of Keras's compiled train step. When not evaluating, each
        variable is assigned its own value, bit for bit."""
        evaluating = ops.equal(self.evaluating, 1)
        for variable in variables:
            z = keras_private.slot(self, self.z, variable)
            y = _lerp(variable, z, 1.0 - self.beta_1)
            self.assign(variable, ops.where(evaluating, y, ops.convert_to_tensor(variable)))
        self.evaluating.assign(0)

    def get_config(self):
        config = super().get_config()
        config.update({
            "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
            "weight_decay": self.decay, "warmup_steps": self.warmup_steps, "r": self.r,
            "weight_lr_power": self.weight_lr_power,
        })
        return config


def _refuse(owner: str, options: dict, names: tuple[str, ...]) -> None:
    """Base-optimizer options the port's own per-step work would bypass (Prodigy's sums run
    before Keras clips or unscales; schedule-free's scalars advance every call)."""
    given = [name for name in names if options.get(name)]
    if given:
        raise ClrpipeError(f"{owner}: {', '.join(given)} not supported (the reference has "
                           "no such option and the port's per-step sums would not see it)")


def _addcmul(start, first, second, value):
    """torch.addcmul's order, start + (value * first) * second, to round as the reference."""
    return ops.add(start, ops.multiply(ops.multiply(first, value), second))


def _read(variable) -> int:
    """A scalar variable's value as a Python int, on every backend (JAX variables have no
    `__int__`)."""
    return int(ops.convert_to_numpy(variable))


def _lerp(start, end, weight):
    """torch.lerp's formula (start + w (end - start) for |w| < 0.5, else end - (end - start)
    (1 - w)), so a port rounds as the reference does."""
    weight = ops.cast(weight, start.dtype)
    gap = ops.subtract(end, start)
    near_start = ops.add(start, ops.multiply(gap, weight))
    near_end = ops.subtract(end, ops.multiply(gap, 1.0 - weight))
    return ops.where(ops.abs(weight) < 0.5, near_start, near_end)


@keras.saving.register_keras_serializable(package="clrpipe")
class Prodigy(keras.optimizers.Optimizer):
    """Prodigy (Mishchenko & Defazio, 2024) as `prodigyopt.Prodigy` (1.1.2) computes it: Adam
    whose step size d·lr is estimated from the run itself.

    Per step, with dlr = d·lr (times Adam's bias correction if `use_bias_correction`), for each
    variable: m = beta_1 m + d (1 - beta_1) g, v = beta_2 v + d² (1 - beta_2) g²,
    s = beta_3 s + (d/d0) dlr g; over the group: numerator = beta_3 numerator
    + (d/d0) dlr Σ g·(x0 - x), d̂ = d_coef numerator / Σ|s|, d_max = max(d_max, d̂),
    d = min(d_max, growth_rate d) (d starts at d0 and jumps to d̂ at its first rise). Then
    x -= dlr m / (sqrt(v) + d epsilon), after decoupled decay x -= wd dlr x.

    The sums need every variable of the group before any update, so `apply` computes them and
    then calls Keras's `apply`, whose `update_step` moves each variable. `group_of(variable)`
    splits the variables into independent groups (one d each: several networks in one model
    train as if alone); without it all variables are one group, as in prodigyopt. Scalars are
    kept in float64, as prodigyopt keeps them in Python floats. Weight decay is this rule's,
    not Keras's. `group_of` is not part of `get_config` (a loaded optimizer has one group).
    """

    def __init__(self, learning_rate=1.0, beta_1=0.9, beta_2=0.999, beta_3=None, epsilon=1e-8,
                 weight_decay=0.0, decouple=True, use_bias_correction=False,
                 safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=math.inf,
                 group_of: GroupOf | None = None, name=None, **kwargs):
        _refuse("Prodigy", kwargs, ("clipnorm", "clipvalue", "global_clipnorm",
                                    "loss_scale_factor", "gradient_accumulation_steps"))
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if d0 <= 0:
            raise ClrpipeError(f"Prodigy: d0 must be positive, got {d0}")
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.beta_3 = beta_3
        self.epsilon = epsilon
        self.decay = float(weight_decay or 0.0)
        self.decouple = decouple
        self.use_bias_correction = use_bias_correction
        self.safeguard_warmup = safeguard_warmup
        self.d0 = d0
        self.d_coef = d_coef
        self.growth_rate = growth_rate
        self.group_of = group_of

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        names = ["s", "p0", "exp_avg_sq"] + (["exp_avg"] if self.beta_1 > 0 else [])
        slots = self.add_optimizer_variables(var_list, names)
        self.s, self.p0, self.exp_avg_sq = slots[:3]
        self.exp_avg = slots[3] if self.beta_1 > 0 else None
        keys = [self.group_of(v) if self.group_of else 0 for v in var_list]
        self._group_keys = list(dict.fromkeys(keys))
        self._variable_group = [self._group_keys.index(key) for key in keys]
        groups = len(self._group_keys)
        d0 = keras.initializers.Constant(self.d0)

        def scalars(name, initializer="zeros"):
            return [self.add_variable((), initializer=initializer, dtype="float64",
                                      name=f"{name}_{g}") for g in range(groups)]

        self.d, self.d_max = scalars("d", d0), scalars("d_max", d0)
        self.d_numerator, self.step_dlr = scalars("d_numerator"), scalars("dlr")

    def apply(self, grads, trainable_variables=None):
        """Prodigy's sums over each group and its new d, then Keras's apply."""
        variables = list(keras_private.built_variables(self) if trainable_variables is None
                         else trainable_variables)
        if not self.built:
            self.build(variables)
        grads = list(grads)
        if self.decay and not self.decouple:
            grads = [g if g is None else ops.add(g, ops.multiply(v, self.decay))
                     for g, v in zip(grads, variables, strict=True)]
        self._estimate(grads, variables)
        return super().apply(grads, trainable_variables)

    def _estimate(self, grads, variables):
        k = ops.cast(self.iterations, "float64")
        lr = ops.cast(self.learning_rate, "float64")
        beta_3 = math.sqrt(self.beta_2) if self.beta_3 is None else self.beta_3
        correction = 1.0
        if self.use_bias_correction:
            correction = (ops.sqrt(1.0 - ops.power(self.beta_2, k + 1.0))
                          / (1.0 - ops.power(self.beta_1, k + 1.0)))
        first = ops.equal(self.iterations, 0)
        members: list[list[tuple[Any, Any]]] = [[] for _ in self._group_keys]
        for grad, variable in zip(grads, variables, strict=True):
            if grad is not None:
                group = keras_private.slot(self, self._variable_group, variable)
                members[group].append((grad, variable))
        for g, pairs in enumerate(members):
            if not pairs:
                continue
            d, d_max = ops.convert_to_tensor(self.d[g]), ops.convert_to_tensor(self.d_max[g])
            dlr = d * lr * correction
            scale = d / self.d0
            numerator = self.d_numerator[g] * beta_3
            delta = ops.zeros((), "float64")
            denom = ops.zeros((), "float64")
            for grad, variable in pairs:
                dtype = variable.dtype
                grad = ops.cast(grad, dtype)
                p0 = keras_private.slot(self, self.p0, variable)
                self.assign(p0, ops.where(first, ops.convert_to_tensor(variable),
                                            ops.convert_to_tensor(p0)))
                dot = ops.sum(ops.multiply(ops.reshape(grad, (-1,)),
                                           ops.reshape(ops.subtract(p0, variable), (-1,))))
                delta = delta + scale * dlr * ops.cast(dot, "float64")
                if self.exp_avg is not None:
                    m = keras_private.slot(self, self.exp_avg, variable)
                    self.assign(m, ops.add(ops.multiply(m, self.beta_1), ops.multiply(
                        grad, ops.cast(d * (1.0 - self.beta_1), dtype))))
                v = keras_private.slot(self, self.exp_avg_sq, variable)
                self.assign(v, _addcmul(ops.multiply(v, self.beta_2), grad, grad,
                                        ops.cast(d * d * (1.0 - self.beta_2), dtype)))
                s = keras_private.slot(self, self.s, variable)
                rate = scale * d if self.safeguard_warmup else scale * dlr
                self.assign(s, ops.add(ops.multiply(s, beta_3),
                                       ops.multiply(grad, ops.cast(rate, dtype))))
                denom = denom + ops.cast(ops.sum(ops.abs(s)), "float64")
            progressed = ops.logical_and(denom > 0, lr > 0)
            total = numerator + delta
            d_hat = self.d_coef * total / ops.where(denom > 0, denom, 1.0)
            rose = ops.where(ops.equal(d, self.d0), ops.maximum(d, d_hat), d)
            new_max = ops.maximum(d_max, d_hat)
            new_d = ops.minimum(new_max, rose * self.growth_rate)
            self.step_dlr[g].assign(dlr)
            self.d_numerator[g].assign(ops.where(progressed, total,
                                                    ops.convert_to_tensor(self.d_numerator[g])))
            self.d_max[g].assign(ops.where(progressed, new_max, d_max))
            self.d[g].assign(ops.where(progressed, new_d, d))

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        g = keras_private.slot(self, self._variable_group, variable)
        d, dlr = self.d[g], self.step_dlr[g]
        v = keras_private.slot(self, self.exp_avg_sq, variable)
        denom = ops.add(ops.sqrt(v), ops.cast(d * self.epsilon, dtype))
        if self.decay and self.decouple:
            self.assign(variable, ops.add(variable, ops.multiply(
                variable, ops.cast(-self.decay * dlr, dtype))))
        if self.exp_avg is not None:
            step = keras_private.slot(self, self.exp_avg, variable)
            rate = -dlr
        else:
            step = ops.cast(gradient, dtype)
            rate = -dlr * d
        self.assign(variable, ops.add(variable, ops.divide(
            ops.multiply(step, ops.cast(rate, dtype)), denom)))

    def get_config(self):
        config = super().get_config()
        config.update({
            "beta_1": self.beta_1, "beta_2": self.beta_2, "beta_3": self.beta_3,
            "epsilon": self.epsilon, "weight_decay": self.decay, "decouple": self.decouple,
            "use_bias_correction": self.use_bias_correction,
            "safeguard_warmup": self.safeguard_warmup, "d0": self.d0, "d_coef": self.d_coef,
            "growth_rate": self.growth_rate,
        })
        return config


def _averaged(optimizer) -> bool:
    return isinstance(optimizer, ScheduleFreeAdamW) or bool(getattr(optimizer, "use_ema", False))


def _evaluation_values(model: keras.Model, optimizer) -> list | None:
    """The weights to evaluate in place of the model's, or None when they are the model's."""
    if isinstance(optimizer, keras.optimizers.ScheduleFreeAdamW):
        raise ClrpipeError("evaluation_weights: Keras's ScheduleFreeAdamW keeps its average "
                           "private; use clrpipe.optimizers.ScheduleFreeAdamW")
    if not _averaged(optimizer) or not optimizer.built or int(optimizer.iterations) == 0:
        return None
    variables = model.trainable_variables
    if isinstance(optimizer, ScheduleFreeAdamW):
        if int(optimizer.evaluating):
            return None
        return [ops.copy(optimizer.average(v)) for v in variables]
    saved = [ops.copy(v.value) for v in variables]
    optimizer.finalize_variable_values(variables)
    averages = [ops.copy(v.value) for v in variables]
    for variable, value in zip(variables, saved, strict=True):
        variable.assign(value)
    return averages


@contextlib.contextmanager
def evaluation_weights(model: keras.Model, optimizer=None) -> Iterator[None]:
    """Inside the block the model holds the weights to evaluate (schedule-free: the average x;
    EMA: the moving average); after it, exactly the weights it held before. A no-op for
    optimizers that evaluate their iterate (SGD, Adam, Muon, Prodigy)."""
    optimizer = model.optimizer if optimizer is None else optimizer
    values = _evaluation_values(model, optimizer)
    if values is None:
        yield
        return
    variables = model.trainable_variables
    saved = [ops.copy(v.value) for v in variables]
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    try:
        yield
    finally:
        for variable, value in zip(variables, saved, strict=True):
            variable.assign(value)


def finalize(model: keras.Model, optimizer=None) -> None:
    """Leave the weights to evaluate in the model, for saving (idempotent; no-op for plain
    optimizers)."""
    optimizer = model.optimizer if optimizer is None else optimizer
    if _averaged(optimizer) and optimizer.built and int(optimizer.iterations) > 0:
        optimizer.finalize_variable_values(model.trainable_variables)


def resume(model: keras.Model, optimizer=None) -> None:
    """Before training again after `finalize`: put the training iterate back (schedule-free's
    y). An EMA's finalize overwrote the iterate, so an EMA run resumes from the average, as in
    Keras. A no-op for plain optimizers."""
    optimizer = model.optimizer if optimizer is None else optimizer
    if isinstance(optimizer, ScheduleFreeAdamW):
        optimizer.restore_iterate(model.trainable_variables)

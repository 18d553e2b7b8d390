"""Every use of Keras's private API, in one place, each guarded by `tests/test_keras_private.py`.

Keras 3 offers no public way to do these things, and clrpipe needs each of them:

- `epoch_order_dataset`: the row order `model.fit(shuffle=True)` draws for an epoch. The fast
  training loop gathers rows itself and must visit them in Keras's order to stay bit-identical
  to `model.fit` (`keras.src...ArrayDataAdapter`).
- `global_seed_generator` / `set_global_seed_generator`: Keras's global `SeedGenerator`, which
  `keras.utils.set_random_seed` and dropout draw from; the range test restores it so training
  afterwards is unchanged (`keras.src.backend.common.global_state`).
- `slot`: an optimizer's per-variable slot (e.g. SGD's momentum) for a custom `update_step`
  (`optimizer._get_variable_index`).
- `built_variables`: the model variables an optimizer was built on (`optimizer.
  _trainable_variables`), which Keras's `apply(grads)` uses when called without variables;
  the schedule-free and Prodigy ports need them before that call.
- `learning_rate_schedule`: the schedule object an optimizer holds (`optimizer._learning_rate`;
  the public `learning_rate` property evaluates it).
- `compute_loss` / `call_has_training_arg`: what Keras's own `train_step` calls to get the loss
  (`model._compute_loss`, which copes with `compute_loss` overrides without `training=`) and
  whether it passes `training=True` (`model._call_has_training_arg`); the range test's fast
  step repeats Keras's `train_step` without its metrics, so it must call the same things.

When a Keras release moves one of them, the guard test names the Keras version and the
missing name instead of a training run failing somewhere deep.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

__all__ = [
    "built_variables",
    "call_has_training_arg",
    "compute_loss",
    "epoch_order_dataset",
    "global_seed_generator",
    "learning_rate_schedule",
    "set_global_seed_generator",
    "slot",
]

_GLOBAL_SEED_GENERATOR = "global_seed_generator"


def epoch_order_dataset(rows: int):
    """A `tf.data.Dataset` whose fresh iterator yields one epoch's row order, as `model.fit`
    with `shuffle=True` draws it: Keras's own array adapter, fed row indices instead of rows
    (its permutation does not depend on the batch size, so one batch of all rows is the order)."""
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    indices = np.arange(rows, dtype=np.int64)
    return ArrayDataAdapter(indices, batch_size=rows, shuffle=True).get_tf_dataset()


def global_seed_generator() -> Any:
    """Keras's global `SeedGenerator` (None until something draws from it)."""
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute(_GLOBAL_SEED_GENERATOR)


def set_global_seed_generator(generator: Any) -> None:
    """Put back a global `SeedGenerator` taken with `global_seed_generator` (None clears it)."""
    from keras.src.backend.common import global_state

    global_state.set_global_attribute(_GLOBAL_SEED_GENERATOR, generator)


def slot(optimizer: keras.Optimizer, slots: list, variable) -> Any:
    """The entry of `slots` (a per-variable list such as `optimizer.momentums`) for `variable`."""
    return slots[optimizer._get_variable_index(variable)]


def built_variables(optimizer: keras.Optimizer) -> list:
    """The model variables `optimizer.build` was given (what `apply(grads)` updates)."""
    return list(optimizer._trainable_variables)


def learning_rate_schedule(optimizer: keras.Optimizer) -> Any:
    """The schedule (or variable) an optimizer was given as its learning rate."""
    return optimizer._learning_rate


def compute_loss(model: keras.Model, x, y, y_pred, sample_weight, training: bool):
    """The loss Keras's `train_step`/`test_step` compute: compiled loss plus `model.losses`."""
    return model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
    )


def call_has_training_arg(model: keras.Model) -> bool:
    """Whether `model.call` takes `training` (Keras's `train_step` passes it only then)."""
    return bool(model._call_has_training_arg)

"""The network: the built-in MLP (the article's three Dense layers, any width and task), or a
user's Keras model from the builder `model._target_` names."""

from __future__ import annotations

import keras

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline.data.tasks import CARDIO, OutputSpec
from clrpipe.pipeline.params import BuiltinModel, CustomModel, ModelParams

__all__ = ["build_model"]


def build_model(params: ModelParams, n_features: int, seed: int,
                output: OutputSpec = CARDIO) -> keras.Model:
    """The `model:` network for `n_features` inputs and the task's `output`, initialised from
    `seed` (Keras's global seed is set first, for the user's builder too)."""
    keras.utils.set_random_seed(seed)
    if isinstance(params, CustomModel):
        return _custom(params, n_features, output)
    return _mlp(params, n_features, output)


def _mlp(params: BuiltinModel, n_features: int, output: OutputSpec) -> keras.Sequential:
    """Hidden Dense layers (each followed by Dropout when `dropout` > 0), then the task's
    output layer. Dropout adds no weights, so weight lists stay comparable."""
    regularizer = keras.regularizers.L2(params.l2) if params.l2 else None
    layers = [keras.Input((n_features,), name="features")]
    for units in params.units:
        layers.append(keras.layers.Dense(units, activation=params.activation,
                                         kernel_initializer=params.kernel_initializer,
                                         kernel_regularizer=regularizer))
        if params.dropout:
            layers.append(keras.layers.Dropout(params.dropout))
    layers.append(keras.layers.Dense(output.units, activation=output.activation))
    return keras.Sequential(layers, name="dense3")


def _custom(params: CustomModel, n_features: int, output: OutputSpec) -> keras.Model:
    """Call the user's builder; refuse anything that is not an uncompiled, built Keras model."""
    from hydra.utils import get_method

    where = f"params.yaml: model._target_: {params.target}"
    try:
        builder = get_method(params.target)
    except Exception as err:  # Hydra wraps ImportError/AttributeError in its own errors
        raise ClrpipeError(f"{where}: cannot import it ({first_line(err)})") from None
    try:
        model = builder(n_features=n_features, output=output, **params.kwargs)
    except TypeError as err:
        raise ClrpipeError(f"{where}: {first_line(err)} (it is called with n_features, "
                           "output and the other model keys)") from None
    if not isinstance(model, keras.Model):
        raise ClrpipeError(f"{where}: expected a keras.Model, got {type(model).__name__}")
    if not model.built:
        model.build((None, n_features))
    return model

"""The article's network: a Keras `Sequential` of three Dense layers for binary classification,
with optional dropout after each hidden layer and L2 on the hidden kernels."""

from __future__ import annotations

import keras

from clrpipe.params import ModelParams

__all__ = ["build_model"]


def build_model(params: ModelParams, n_features: int, seed: int) -> keras.Sequential:
    """Two hidden Dense layers (each followed by Dropout when `dropout` > 0) and one sigmoid
    unit, initialised from `seed`. Dropout adds no weights, so weight lists stay comparable."""
    keras.utils.set_random_seed(seed)
    regularizer = keras.regularizers.L2(params.l2) if params.l2 else None
    layers = [keras.Input((n_features,), name="features")]
    for units in params.units:
        layers.append(keras.layers.Dense(units, activation=params.activation,
                                         kernel_initializer=params.kernel_initializer,
                                         kernel_regularizer=regularizer))
        if params.dropout:
            layers.append(keras.layers.Dropout(params.dropout))
    layers.append(keras.layers.Dense(1, activation="sigmoid"))
    return keras.Sequential(layers, name="dense3")

"""A user's own Keras model, as a project outside clrpipe would write it: a builder that gets the
input width and the task's output spec (and its own keyword arguments from `model:`)."""

from __future__ import annotations

import keras


def build(n_features: int, output, width: int = 16, depth: int = 2) -> keras.Model:
    """A functional residual MLP: `depth` blocks of `width` units with a skip connection."""
    inputs = keras.Input((n_features,), name="row")
    hidden = keras.layers.Dense(width, activation="relu")(inputs)
    for _ in range(depth - 1):
        block = keras.layers.Dense(width, activation="relu")(hidden)
        hidden = keras.layers.Add()([hidden, block])
    outputs = keras.layers.Dense(output.units, activation=output.activation)(hidden)
    return keras.Model(inputs, outputs, name="user_residual_mlp")


def not_a_model(n_features: int, output) -> str:
    return "not a model"

"""The article's network: a Keras `Sequential` of three Dense layers for binary classification."""

from __future__ import annotations

import keras
from pydantic import Field, field_validator

from clrpipe.config import Section


class ModelParams(Section):
    """`model:` hidden layer sizes, activation and initializer."""

    units: list[int] = Field(min_length=2, max_length=2)
    activation: str = "relu"
    kernel_initializer: str = "glorot_uniform"

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, name: str) -> str:
        try:
            keras.activations.get(name)
        except ValueError:
            raise ValueError(f"expected a Keras activation name, got {name!r}") from None
        return name

    @field_validator("kernel_initializer")
    @classmethod
    def _known_initializer(cls, name: str) -> str:
        try:
            keras.initializers.get(name)
        except ValueError:
            raise ValueError(f"expected a Keras initializer name, got {name!r}") from None
        return name


def build_model(params: ModelParams, n_features: int, seed: int) -> keras.Sequential:
    """Two hidden Dense layers and one sigmoid unit, initialised from `seed`."""
    keras.utils.set_random_seed(seed)
    hidden = [
        keras.layers.Dense(units, activation=params.activation,
                           kernel_initializer=params.kernel_initializer)
        for units in params.units
    ]
    return keras.Sequential(
        [keras.Input((n_features,), name="features"), *hidden,
         keras.layers.Dense(1, activation="sigmoid")],
        name="dense3",
    )

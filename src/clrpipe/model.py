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

    @field_validator("activation", "kernel_initializer")
    @classmethod
    def _known_to_keras(cls, name: str, info) -> str:
        lookup = {"activation": keras.activations.get, "kernel_initializer": keras.initializers.get}
        try:
            lookup[info.field_name](name)
        except ValueError:
            kind = info.field_name.replace("kernel_", "")
            raise ValueError(f"expected a Keras {kind} name, got {name!r}") from None
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

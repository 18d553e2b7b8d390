"""Packing seeds into one model: each copy ends exactly where it would training alone."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from clrpipe.pipeline.data.tasks import OutputSpec
from clrpipe.pipeline.params import BuiltinModel
from clrpipe.pipeline.training import loop
from clrpipe.pipeline.training.model import build_model
from clrpipe.study import packed

PARAMS = BuiltinModel(units=[16, 8], dropout=0.1)
SEEDS = (3, 11)
ORDER_SEED = 5


def optimizer_of(name: str):
    if name == "sgd":
        return keras.optimizers.SGD(0.05, momentum=0.9)
    return keras.optimizers.Adam(3e-3)


def alone(data, seed: int, name: str, output: OutputSpec, y, y_val):
    x, _, x_val, _ = data
    model = build_model(PARAMS, x.shape[1], seed, output)
    loop.compile_model(model, optimizer_of(name), 16, output=output)
    history = loop.fit(model, x, y, epochs=3, batch_size=32, validation=(x_val, y_val),
                           reshuffle_seed=ORDER_SEED)
    return model.get_weights(), history


def copy_weights(model: keras.Model, index: int) -> list[np.ndarray]:
    prefix = packed.seed_prefix(index)
    return [v.numpy() for layer in model.layers if layer.name.startswith(prefix)
            for v in layer.trainable_weights]


TASKS = {
    "binary": OutputSpec("binary", (0, 1)),
    "multiclass": OutputSpec("multiclass", (0, 1, 2)),
    "regression": OutputSpec("regression"),
}


def targets(data, task: str):
    _, y, _, y_val = data
    if task == "multiclass":
        return (y * 2 - (y > 0)).astype("float32") % 3, (y_val * 2 - (y_val > 0)) % 3
    if task == "regression":
        x, _, x_val, _ = data
        return x[:, 0] * 0.8 + x[:, 2], x_val[:, 0] * 0.8 + x_val[:, 2]
    return y, y_val


@pytest.mark.parametrize(("name", "task"), [("sgd", "binary"),
                                            ("adam", "multiclass"), ("sgd", "regression")])
def test_packed_seeds_end_with_the_weights_and_scores_of_separate_trials(data, name, task):
    output = TASKS[task]
    y, y_val = targets(data, task)
    x, _, x_val, _ = data
    result = packed.train_packed(
        PARAMS, SEEDS, lambda _: optimizer_of(name), x, y, epochs=3, batch_size=32,
        order_seed=ORDER_SEED, validation=(x_val, y_val), test=(x_val, y_val), output=output,
        steps_per_execution=16,
    )
    for index, seed in enumerate(SEEDS):
        weights, history = alone(data, seed, name, output, y, y_val)
        ours = copy_weights(result.model, index)
        assert len(ours) == len(weights) == 6
        for mine, theirs in zip(ours, weights, strict=True):
            np.testing.assert_allclose(mine, theirs, atol=1e-5)
        score = output.score
        np.testing.assert_allclose(result.per_seed[index].epochs[f"val_{score}"],
                                   history.epochs[f"val_{score}"], atol=1e-5)
        np.testing.assert_allclose(result.per_seed[index].epochs["val_loss"],
                                   history.epochs["val_loss"], atol=1e-5)
    assert len(result.test) == 2 and result.test[0] != result.test[1]


def test_group_of_names_each_variables_copy():
    model = packed.build_packed(PARAMS, 4, SEEDS)
    owner = packed.group_of(model)
    found = [(layer.name[:3], {owner(v) for v in layer.trainable_variables})
             for layer in model.layers if layer.trainable_variables]
    assert sorted(found) == [("s0_", {0})] * 3 + [("s1_", {1})] * 3

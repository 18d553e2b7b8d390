"""Run in a fresh venv (wheel + one backend) by `tests/test_backends.py`, with KERAS_BACKEND set:
the library's guarantees on that backend. Prints `backend check ok: ...`; any failure raises."""

from __future__ import annotations

import os
import random
import sys

assert "keras" not in sys.modules, "import clrpipe loaded keras"
from clrpipe import (  # noqa: E402
    CyclicalLearningRate,
    LRFinder,
    OneCycleLearningRate,
    ScheduledMomentumSGD,
    lr_range_test,
)

BACKEND = os.environ["KERAS_BACKEND"]
never = ["mlflow", "dvc", "ray", "pandas", "hydra", "sklearn"]
if BACKEND != "tensorflow":
    never.append("tensorflow")
loaded = [m for m in never if m in sys.modules]
assert not loaded, f"from clrpipe import lr_range_test loaded {loaded}"

import keras  # noqa: E402
import numpy as np  # noqa: E402

from clrpipe.optimizers import Prodigy, ScheduleFreeAdamW  # noqa: E402

assert keras.backend.backend() == BACKEND, keras.backend.backend()
rng = np.random.default_rng(0)
X = rng.normal(size=(384, 8)).astype("float32")
Y = (X[:, 0] + X[:, 1] > 0).astype("int32")


def model_pair(optimizer=lambda: keras.optimizers.Adam(1e-3)):
    """Two identical compiled models with dropout (a seed generator) and trained Adam slots."""
    out = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(2, "softmax")])
        m.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
        m.fit(X, Y, batch_size=64, epochs=1, verbose=0)
        out.append(m)
    return out


def state(m):
    gen = keras.src.backend.common.global_state.get_global_attribute("global_seed_generator")
    return ([v.numpy().copy() for v in m.variables],
            [v.numpy().copy() for v in m.optimizer.variables],
            np.random.get_state()[1].copy(), random.getstate(),
            None if gen is None else gen.state.numpy().copy())


def same(a, b):
    wa, oa, na, pa, ga = a
    wb, ob, nb, pb, gb = b
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True)), "weights changed"
    assert all(np.array_equal(x, y) for x, y in zip(oa, ob, strict=True)), "optimizer changed"
    assert np.array_equal(na, nb) and pa == pb, "numpy or python RNG changed"
    assert (ga is None and gb is None) or np.array_equal(ga, gb), "keras seed generator changed"


class Batches(keras.utils.PyDataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return X[i * 64 : (i + 1) * 64], Y[i * 64 : (i + 1) * 64]


results = {}
for name, data, optimizer in (
    ("arrays", (X, Y), lambda: keras.optimizers.Adam(1e-3)),
    ("PyDataset", (Batches(),), lambda: keras.optimizers.Adam(1e-3)),
    # x in the model after fit; each twin's next compiled step restores y (#24: JAX's cond)
    ("schedule-free", (X, Y), lambda: ScheduleFreeAdamW(1e-2)),
):
    tested, untouched = model_pair(optimizer)
    keras.random.randint((1,), 0, 9)  # the global SeedGenerator exists and has advanced
    before = state(tested)
    kwargs = {} if name == "PyDataset" else {"batch_size": 32}
    result = lr_range_test(tested, *data, num_steps=40, seeds=2, min_lr=1e-4, max_lr=1.0,
                           validation_data=(X[:96], Y[:96]), val_every=10, **kwargs)
    same(before, state(tested))
    assert 0 < result.base_lr < result.max_lr, (result.base_lr, result.max_lr)
    assert len(result.analyses) == 2 and set(result.suggestions) >= {"steepest", "valley"}
    for m in (tested, untouched):  # training afterwards: as if there had been no test
        keras.utils.set_random_seed(1)
        m.fit(X, Y, batch_size=32, epochs=1, verbose=0)
    same(state(untouched)[:2] + state(tested)[2:], state(tested))
    results[name] = (result.base_lr, result.max_lr)

from clrpipe.errors import ClrpipeError  # noqa: E402

misuse, _ = model_pair()
fresh = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
bad_x = X.copy()
bad_x[3, 1] = np.nan
for call, first in (
    (lambda: lr_range_test(misuse, X[:, :5], Y), "x: expected rows of shape (n, 8)"),
    (lambda: lr_range_test(fresh, X, Y), "model: not compiled"),
    (lambda: lr_range_test(misuse, X, Y, min_lr=1.0, max_lr=0.1), "min_lr: expected < "),
    (lambda: lr_range_test(misuse, X, Y, min_lr=-1.0), "min_lr: expected > 0"),
    (lambda: lr_range_test(misuse, bad_x, Y), "x: expected finite values, found 1"),
    (lambda: lr_range_test(misuse, X, np.full(len(Y), np.inf, "float32")), "y: expected finite"),
):
    try:
        call()
    except ClrpipeError as err:
        assert str(err).startswith(first) and "\n" not in str(err), (first, str(err))
    else:
        raise AssertionError(f"no error: {first}")

diverging, _ = model_pair(lambda: keras.optimizers.SGD(0.01))
steps = [len(a.curve.losses) for a in lr_range_test(
    diverging, X, Y, batch_size=32, num_steps=200, min_lr=1e-3, max_lr=1e4, seeds=1).analyses]
assert steps[0] < 200, f"no divergence stop: {steps}"

finder_model, _ = model_pair(lambda: keras.optimizers.SGD(0.01))
finder = LRFinder(min_lr=1e-4, max_lr=10.0, num_steps=50)
finder_model.fit(X, Y, batch_size=16, epochs=10, callbacks=[finder], verbose=0)
assert 0 < finder.result.base_lr < finder.result.max_lr

for make in (lambda: keras.optimizers.Adam(CyclicalLearningRate(1e-3, 1e-2, step_size=6)),
             lambda: keras.optimizers.SGD(OneCycleLearningRate(1e-2, total_steps=24)),
             lambda: ScheduledMomentumSGD(1e-2, CyclicalLearningRate(0.85, 0.95, step_size=6)),
             lambda: Prodigy(1.0)):
    m, _ = model_pair(make)
    loss = m.fit(X, Y, batch_size=64, epochs=2, verbose=0).history["loss"][-1]
    assert np.isfinite(loss), (make, loss)

# Schedule-free in Keras's own compiled fit: x (the average) in the model after each fit, y put
# back by the next fit's first step; the loss falls across fits.
schedule_free, _ = model_pair(lambda: ScheduleFreeAdamW(1e-2))
sf = schedule_free.optimizer
first = schedule_free.evaluate(X, Y, verbose=0, return_dict=True)["loss"]
assert int(keras.ops.convert_to_numpy(sf.evaluating)) == 1, "x not in the model after fit"
x_before = [w.copy() for w in schedule_free.get_weights()]
losses = schedule_free.fit(X, Y, batch_size=64, epochs=3, verbose=0).history["loss"]
assert int(keras.ops.convert_to_numpy(sf.evaluating)) == 1, "x not in the model after fit"
assert int(keras.ops.convert_to_numpy(sf.iterations)) == 6 + 18, sf.iterations
assert not any(np.array_equal(a, b) for a, b in zip(x_before, schedule_free.get_weights(),
                                                    strict=True)), "fit did not move the weights"
last = schedule_free.evaluate(X, Y, verbose=0, return_dict=True)["loss"]
assert np.all(np.isfinite(losses)) and last < first, (first, losses, last)

print(f"backend check ok: {BACKEND} {results} divergence stop at {steps[0]} of 200")

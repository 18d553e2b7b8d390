"""Train the article's Keras 2 network with tfa 0.23's CyclicalLearningRate; print JSON results.

    python tfa_train.py --data data.npz --weights weights.npz --runs runs.json

data.npz holds x and y, and optionally x_val/y_val (per-epoch validation) and x_test/y_test
(a final evaluation). weights.npz holds the initial weights in `model.get_weights()` order
(arr_0, arr_1, ...). runs.json is a list of runs ('-': stdin), each
{"schedule": <clrpipe CyclicalLearningRate config>, "units": [16, 8], "epochs": 2,
 "batch_size": 350} plus optional keys "activation" ("relu"), "dropout" (0: none), "l2" (0:
none), "momentum" (0.0), "shuffle" (false: batches in file order, as the parity test needs),
"seed" (0) and "weights_out" (a path for the final weights, saved like weights.npz). Each run
rebuilds the model (Dense layers of `units`, each followed by Dropout when "dropout" > 0, with
L2 on their kernels when "l2" > 0, then one sigmoid unit), sets the weights, and fits with SGD,
binary cross-entropy and accuracy. Output (stdout): JSON with, per run, the history of every
epoch (loss, accuracy and val_* when validation data is given), the epoch seconds, the final
step count, the learning rate tfa's schedule gives at every step taken, and the test
loss/accuracy when test data is given.
"""

from tfa_common import tfa_schedule  # isort: skip  (before TensorFlow, to quiet it)

import argparse
import json
import sys
import time

import numpy as np
import tensorflow as tf


class EpochTimer(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def train(run: dict, data, weights: list[np.ndarray]) -> dict:
    tf.keras.utils.set_random_seed(run.get("seed", 0))
    x, y = data["x"], data["y"]
    activation = run.get("activation", "relu")
    dropout, l2 = run.get("dropout", 0.0), run.get("l2", 0.0)
    layers = [tf.keras.Input(shape=(x.shape[1],))]
    for units in run["units"]:
        regularizer = tf.keras.regularizers.L2(l2) if l2 else None
        layers.append(tf.keras.layers.Dense(units, activation=activation,
                                            kernel_regularizer=regularizer))
        if dropout:
            layers.append(tf.keras.layers.Dropout(dropout))
    model = tf.keras.Sequential([*layers, tf.keras.layers.Dense(1, activation="sigmoid")])
    model.set_weights(weights)
    schedule = tfa_schedule(run["schedule"])
    optimizer = tf.keras.optimizers.SGD(learning_rate=schedule, momentum=run.get("momentum", 0.0))
    model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["accuracy"])
    validation = (data["x_val"], data["y_val"]) if "x_val" in data else None
    timer = EpochTimer()
    history = model.fit(
        x,
        y,
        batch_size=run["batch_size"],
        epochs=run["epochs"],
        shuffle=run.get("shuffle", False),
        validation_data=validation,
        callbacks=[timer],
        verbose=0,
    )
    steps = int(model.optimizer.iterations.numpy())
    result = {
        "loss": [float(v) for v in history.history["loss"]],
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "epoch_seconds": timer.seconds,
        "iterations": steps,
        "learning_rate": float(schedule(steps).numpy()),
        "lr_per_step": [float(v) for v in schedule(np.arange(steps, dtype=np.int64)).numpy()],
    }
    if "x_test" in data:
        loss, accuracy = model.evaluate(data["x_test"], data["y_test"], batch_size=4096, verbose=0)
        result["test"] = {"loss": float(loss), "accuracy": float(accuracy)}
    if run.get("weights_out"):
        np.savez(run["weights_out"], *model.get_weights())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--runs", required=True, help="JSON file with a list of runs ('-': stdin)")
    args = parser.parse_args()
    with np.load(args.data) as saved:
        data = {name: saved[name] for name in saved.files}
    with np.load(args.weights) as saved:
        weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    with open(0 if args.runs == "-" else args.runs) as stream:
        runs = json.load(stream)
    results = [train(run, data, weights) for run in runs]
    json.dump({"tensorflow": tf.__version__, "runs": results}, sys.stdout)


if __name__ == "__main__":
    main()

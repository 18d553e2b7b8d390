"""Train a small Keras 2 model with tfa 0.23's CyclicalLearningRate; print per-epoch losses.

    python tfa_train.py --data data.npz --weights weights.npz --runs runs.json

data.npz holds x and y; weights.npz holds the initial weights in `model.get_weights()` order
(arr_0, arr_1, ...). runs.json is a list of runs, each
{"schedule": <clrpipe CyclicalLearningRate config>, "units": [16, 8], "epochs": 2,
 "batch_size": 350}. Each run rebuilds the model (Dense relu layers of `units`, then one
sigmoid unit), sets the weights, and fits with plain SGD, binary cross-entropy and
shuffle=False, so batches come in file order. Output (stdout): JSON with, per run, the loss of
every epoch, the final step count and the learning rate at that step.
"""

from tfa_common import tfa_schedule  # isort: skip  (before TensorFlow, to quiet it)

import argparse
import json
import sys

import numpy as np
import tensorflow as tf


def train(run: dict, x: np.ndarray, y: np.ndarray, weights: list[np.ndarray]) -> dict:
    tf.keras.utils.set_random_seed(run.get("seed", 0))
    model = tf.keras.Sequential(
        [tf.keras.Input(shape=(x.shape[1],))]
        + [tf.keras.layers.Dense(units, activation="relu") for units in run["units"]]
        + [tf.keras.layers.Dense(1, activation="sigmoid")]
    )
    model.set_weights(weights)
    schedule = tfa_schedule(run["schedule"])
    model.compile(
        optimizer=tf.keras.optimizers.SGD(learning_rate=schedule), loss="binary_crossentropy"
    )
    history = model.fit(
        x, y, batch_size=run["batch_size"], epochs=run["epochs"], shuffle=False, verbose=0
    )
    steps = int(model.optimizer.iterations.numpy())
    return {
        "loss": [float(v) for v in history.history["loss"]],
        "iterations": steps,
        "learning_rate": float(schedule(steps).numpy()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--runs", required=True, help="JSON file with a list of runs ('-': stdin)")
    args = parser.parse_args()
    data = np.load(args.data)
    with np.load(args.weights) as saved:
        weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    with open(0 if args.runs == "-" else args.runs) as stream:
        runs = json.load(stream)
    results = [train(run, data["x"], data["y"], weights) for run in runs]
    json.dump({"tensorflow": tf.__version__, "runs": results}, sys.stdout)


if __name__ == "__main__":
    main()

"""The article's flow in one script, as the benchmark's reference for the whole pipeline.

    python bench/article_script.py CARDIO_CSV [--epochs 50]

Read the Kaggle table, scale every column (before the split, as the article did), split 80/20,
then train the same three-Dense-layer network twice with a plain `model.fit`: SGD at a constant
0.01 with batch 32, and triangular CLR between 1e-4 and 1e-2 (tfa's documented example; here
clrpipe's tfa-identical schedule class, as TensorFlow Addons does not import under Keras 3) with
batch 350 and step_size = 2 epochs of iterations. No repair, no validation, no tracking, no
caching: what the pipeline replaces. Prints each run's test accuracy and seconds.
"""

from __future__ import annotations

import argparse
import time

import keras
import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from clrpipe.schedules import CyclicalLearningRate


def build(n_features: int) -> keras.Sequential:
    keras.utils.set_random_seed(42)
    return keras.Sequential(
        [
            keras.Input((n_features,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv")
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()

    frame = pd.read_csv(args.csv, sep=";")
    x = StandardScaler().fit_transform(frame.drop(columns=["id", "cardio"]).to_numpy("float32"))
    y = frame["cardio"].to_numpy("float32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=42)

    clr_batch = 350
    schedule = CyclicalLearningRate(1e-4, 1e-2, step_size=2 * len(x_train) // clr_batch)
    runs = {
        "baseline": (keras.optimizers.SGD(0.01), 32),
        "clr": (keras.optimizers.SGD(schedule), clr_batch),
    }
    for name, (optimizer, batch_size) in runs.items():
        started = time.perf_counter()
        model = build(x.shape[1])
        model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["accuracy"])
        model.fit(x_train, y_train, batch_size=batch_size, epochs=args.epochs)
        _, accuracy = model.evaluate(x_test, y_test, verbose=0)
        print(f"{name}: test accuracy {accuracy:.4f} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

"""clrpipe's CyclicalLearningRate against the real tfa 0.23 class in legacy/.venv.

TensorFlow Addons does not import with Keras 3, so these tests call the legacy interpreter
(TF 2.15 + tfa 0.23, built by `uv sync --project legacy --frozen`) once per test module
section and compare its JSON output with our schedule in this environment. A missing legacy
environment is a failure, not a skip: without it nothing shows that we still match tfa.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from clrpipe.schedules import ConstantLearningRate, CyclicalLearningRate

pytestmark = pytest.mark.legacy

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "legacy"
LEGACY_PYTHON = LEGACY / ".venv" / "bin" / "python"

STEPS = 6000
CASES = [
    # (policy, scale_mode, initial, maximal, step_size, gamma)
    ("triangular", "cycle", 1e-4, 1e-2, 320, 1.0),  # the article: 2 x 160 iterations
    ("triangular", "iterations", 1e-4, 1e-2, 320, 1.0),
    ("triangular", "cycle", 3e-4, 0.05, 137.5, 1.0),
    ("triangular2", "cycle", 1e-4, 1e-2, 160, 1.0),
    ("triangular2", "iterations", 1e-3, 0.1, 250, 1.0),
    ("exp_range", "iterations", 1e-4, 1e-2, 160, 0.9995),
    ("exp_range", "cycle", 1e-4, 1e-2, 160, 0.9),
]
PARITY_RTOL = 1e-6
# Training comparison: per-epoch mean loss, Keras 3.15 / TF 2.21 vs Keras 2.15 / TF 2.15.
# Measured: identical for triangular, 1.0e-7 relative for triangular2 (float32 round-off);
# the tolerance leaves a 100x margin.
LOSS_RTOL = 1e-5


def _config(policy, scale_mode, initial, maximal, step_size, gamma) -> dict:
    return CyclicalLearningRate(initial, maximal, step_size, scale_mode, policy, gamma).get_config()


def _legacy(script: str, *args: str, stdin: str | None = None) -> dict:
    """Run a legacy/ script with the legacy interpreter and parse its JSON output."""
    if not LEGACY_PYTHON.exists():
        pytest.fail(
            f"{LEGACY_PYTHON.relative_to(ROOT)} is missing: build the tfa 0.23 reference "
            "environment with `uv sync --project legacy --frozen`",
            pytrace=False,
        )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(
        [str(LEGACY_PYTHON), str(LEGACY / script), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def tfa_values() -> dict:
    cases = [{"schedule": _config(*case), "steps": STEPS} for case in CASES]
    # tfa's own tests call the schedule with one Python int per step; check that the
    # vectorised call above gives the same numbers on a prefix of the scale-sensitive cases.
    cases += [{"schedule": _config(*CASES[i]), "steps": 300, "step_kind": "int"} for i in (4, 5, 6)]
    out = _legacy("tfa_values.py", "--batch", "-", stdin=json.dumps(cases))
    assert (out["tensorflow_addons"], out["tensorflow"][:5]) == ("0.23.0", "2.15.")
    return out


def _ours(case, steps: int, dtype: str) -> np.ndarray:
    schedule = CyclicalLearningRate(**_config(*case))
    return np.asarray(schedule(tf.range(steps, dtype=dtype)), dtype=np.float64)


def max_relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs) / np.abs(theirs)))


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: "-".join(map(str, CASES[i])))
def test_values_equal_tfa(tfa_values, index):
    theirs = np.asarray(tfa_values["values"][index])
    assert theirs.shape == (STEPS,)
    assert np.ptp(theirs) > 0
    for dtype in ("int32", "int64"):
        ours = _ours(CASES[index], STEPS, dtype)
        assert max_relative_difference(ours, theirs) <= PARITY_RTOL, dtype


def test_vectorised_tfa_reference_equals_per_step_calls(tfa_values):
    per_step = tfa_values["values"][len(CASES) :]
    for offset, index in enumerate((4, 5, 6)):
        vector = np.asarray(tfa_values["values"][index][:300])
        np.testing.assert_array_equal(np.asarray(per_step[offset]), vector)


# --- a short training run with each schedule -------------------------------------------

UNITS = [16, 8]
BATCH = 350
ROWS = 32 * BATCH  # 32 iterations per epoch


def _mlp(features: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input(shape=(features,))]
        + [keras.layers.Dense(units, activation="relu") for units in UNITS]
        + [keras.layers.Dense(1, activation="sigmoid")]
    )


def fit_keras3(schedule, x, y, weights, epochs: int) -> dict:
    """Our side of tfa_train.py: same model, weights, batch order and plain SGD, in Keras 3."""
    model = _mlp(x.shape[1])
    model.set_weights(weights)
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    history = model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    steps = int(model.optimizer.iterations)
    return {
        "loss": history.history["loss"],
        "iterations": steps,
        "learning_rate": float(schedule(steps)),
    }


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    """Data, initial weights and two 2-epoch runs: the article's triangular, and triangular2."""
    rng = np.random.default_rng(42)
    x = rng.normal(size=(ROWS, 11)).astype("float32")
    y = (x @ rng.normal(size=11) + rng.normal(scale=2.0, size=ROWS) > 0).astype("float32")
    weights = _mlp(11).get_weights()
    folder = tmp_path_factory.mktemp("tfa_train")
    np.savez(folder / "data.npz", x=x, y=y)
    np.savez(folder / "weights.npz", *weights)
    schedules = [
        CyclicalLearningRate(0.01, 0.5, step_size=2 * 32),  # step_size = 2 epochs
        CyclicalLearningRate(0.01, 0.5, step_size=16, policy="triangular2"),  # 2 cycles
    ]
    runs = [
        {"schedule": s.get_config(), "units": UNITS, "epochs": 2, "batch_size": BATCH}
        for s in schedules
    ]
    (folder / "runs.json").write_text(json.dumps(runs))
    theirs = _legacy(
        "tfa_train.py",
        "--data",
        str(folder / "data.npz"),
        "--weights",
        str(folder / "weights.npz"),
        "--runs",
        str(folder / "runs.json"),
    )["runs"]
    ours = [fit_keras3(s, x, y, weights, epochs=2) for s in schedules]
    control = fit_keras3(ConstantLearningRate(0.01), x, y, weights, epochs=2)
    return {"ours": ours, "theirs": theirs, "control": control}


@pytest.mark.slow
@pytest.mark.parametrize("run", [0, 1], ids=["triangular", "triangular2"])
def test_two_epochs_of_training_match_tfa(training, run):
    ours, theirs = training["ours"][run], training["theirs"][run]
    assert ours["iterations"] == theirs["iterations"] == 64
    assert ours["learning_rate"] == pytest.approx(theirs["learning_rate"], rel=PARITY_RTOL)
    assert len(ours["loss"]) == len(theirs["loss"]) == 2
    np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=LOSS_RTOL)
    # The comparison can tell schedules apart: a constant LR ends far from tfa's losses.
    control = np.asarray(training["control"]["loss"])
    assert np.max(np.abs(control - theirs["loss"]) / theirs["loss"]) > 100 * LOSS_RTOL

"""clrpipe as a library: the README's example runs, `import clrpipe` stays cheap, and the wheel
installs into a fresh virtual environment and works there (import, example, `clrpipe`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "mlflow", "dvc", "ray", "matplotlib", "pandas")

# Small data around the README's example: the 8x8 digits and a small convolutional network.
PREAMBLE = '''
import keras, numpy as np
from sklearn.datasets import load_digits
digits = load_digits()
x, y = (digits.images[..., None] / 16.0).astype("float32"), digits.target
x, y, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]  # the last 397 rows held out
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
'''
CHECK = '''
accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
majority = np.bincount(y_test).max() / len(y_test)
assert 0 < result.base_lr < result.max_lr and result.lr > 0, result  # lr: the study's rule
assert type(ax).__name__ == "Axes", ax
print(f"README example: bounds {result.base_lr:.3g}..{result.max_lr:.3g}, lr {result.lr:.3g}, "
      f"held-out accuracy {accuracy:.3f} (majority class {majority:.3f})")
assert accuracy > majority + 0.5, (accuracy, majority)
'''


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Use it in your own Keras code", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "expected one python block in the README's library section"
    return blocks[0]


def test_readme_example_beats_the_majority_class_on_held_out_rows():
    script = PREAMBLE + readme_example() + CHECK
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "README example: bounds" in done.stdout
    print(done.stdout.strip().splitlines()[-1])


def test_import_clrpipe_loads_nothing_heavy_and_names_load_on_use():
    script = (
        "import sys, time\n"
        "t = time.perf_counter(); import clrpipe; t = time.perf_counter() - t\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy and t < 1.0, (heavy, t)\n"
        "assert sorted(clrpipe.__all__) == sorted(clrpipe._LAZY)\n"
        "from clrpipe import lr_range_test, CyclicalLearningRate, OneCycleLearningRate, LRFinder\n"
        "assert 'keras' in sys.modules\n"
        "extras = [m for m in ('mlflow', 'dvc', 'ray', 'hydra') if m in sys.modules]\n"
        "assert not extras, extras  # (TensorFlow itself loads pandas, scipy, matplotlib)\n"
        "assert lr_range_test.__doc__ and '```python' in lr_range_test.__doc__\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def _uv() -> list[str]:
    if shutil.which("uv"):
        return [shutil.which("uv")]
    python = shutil.which("python3")
    if python and subprocess.run([python, "-m", "uv", "--version"],
                                 capture_output=True).returncode == 0:
        return [python, "-m", "uv"]
    pytest.fail("uv is needed to build the wheel (python3 -m pip install uv==0.9.30)")


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_works_there(tmp_path):
    """`uv build` makes a wheel; a fresh `python -m venv` gets it with `pip install --no-deps`,
    and the locked dependencies by a .pth line pointing at this project's site-packages (a path
    only: that directory's own .pth files, including the editable clrpipe, are not processed),
    so the clrpipe imported there is the wheel's. Measured: 23-28 s on 2 busy cores."""
    started = time.perf_counter()
    dist = tmp_path / "dist"
    built = subprocess.run([*_uv(), "build", "--wheel", "--out-dir", str(dist)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("clrpipe-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "project_deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                              str(wheel)], capture_output=True, text=True, env=env, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True,
                           env=env, timeout=300)
    assert "clrpipe" not in check.stdout, check.stdout  # its requirements are all met

    where = subprocess.run([str(python), "-c", "import clrpipe; print(clrpipe.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert where.returncode == 0, where.stderr[-3000:]
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel's copy
    example = subprocess.run([str(python), "-c", PREAMBLE + readme_example() + CHECK],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert example.returncode == 0, example.stderr[-3000:]
    command = subprocess.run([str(venv / "bin" / "clrpipe"), "--help"], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=300)
    assert command.returncode == 0 and "range-test" in command.stdout, command.stderr[-3000:]
    print(f"wheel test: {time.perf_counter() - started:.1f} s")

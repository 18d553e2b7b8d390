"""The library on Keras 3's three backends, as a user installs it: the wheel without extras but
`plot` (matplotlib, for the README's `result.plot()`) plus one backend in a fresh venv under
`build/venvs/<backend>` (kept between runs; the wheel is reinstalled each session). In each,
`tests/backend_check.py` (arrays and a `PyDataset`, bit-for-bit restore, divergence stop,
`LRFinder`, schedules, optimizer ports) runs with `KERAS_BACKEND` set, the `clrpipe` script
says in one line that it needs the `pipeline` extra, and on JAX (no TensorFlow installed) the
README's example too (once: it trains for minutes on 2 busy cores).
JAX and TensorFlow come from the registry through uv; PyTorch through the venv's own pip
(`torch==2.13.0` is a CPU wheel on these machines' disk, which uv cannot see)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_library import CHECK, _uv, readme_example

REPO = Path(__file__).resolve().parents[1]
VENVS = REPO / "build" / "venvs"
BACKEND_PACKAGES = {"jax": ["jax"], "torch": ["torch==2.13.0"],
                    "tensorflow": ["tensorflow==2.21.*"]}

FRESH_PREAMBLE = '''
import os, keras, numpy as np
digits = np.load(os.environ["DIGITS"])
x, y = digits["x"], digits["y"]
x, y, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]  # the last 397 rows held out
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
'''

NO_PIPELINE = ("error: the clrpipe command needs the pipeline extra (no module named 'click'): "
               "pip install 'clrpipe[pipeline]'\n")
"""The `clrpipe` script without the `pipeline` extra: this one line on stderr, exit 1."""


def test_only_the_backend_module_imports_tensorflow():
    """Backend-specific code of the library lives in `clrpipe/_backend.py` alone."""
    found = [p.name for p in (REPO / "src" / "clrpipe").glob("*.py")
             if re.search(r"^\s*(import|from) (tensorflow|jax|torch)\b", p.read_text(), re.M)]
    assert found == ["_backend.py"], found


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run([*_uv(), "build", "--wheel", "--out-dir", str(dist)], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (found,) = dist.glob("clrpipe-*.whl")
    return found


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    from sklearn.datasets import load_digits

    data = load_digits()
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    import numpy as np

    np.savez(path, x=(data.images[..., None] / 16.0).astype("float32"), y=data.target)
    return path


def backend_venv(backend: str, wheel: Path) -> Path:
    """`build/venvs/<backend>` with the backend (installed once) and this session's wheel."""
    venv = VENVS / backend
    python = venv / "bin" / "python"
    ready = venv / ".backend-installed"
    if not ready.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                       timeout=300)
        if backend == "torch":
            cmd = [str(python), "-m", "pip", "install", "-q", *BACKEND_PACKAGES[backend]]
        else:
            cmd = [*_uv(), "pip", "install", "-q", "--python", str(python),
                   *BACKEND_PACKAGES[backend]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        ready.write_text(" ".join(BACKEND_PACKAGES[backend]) + "\n")
    done = subprocess.run([*_uv(), "pip", "install", "-q", "--python", str(python),
                           "--reinstall-package", "clrpipe", f"clrpipe[plot] @ {wheel.as_uri()}"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return python


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch", "tensorflow"])
def test_library_on_each_backend_from_a_fresh_venv(backend, wheel, digits, tmp_path):
    python = backend_venv(backend, wheel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"KERAS_BACKEND": backend, "DIGITS": str(digits)}
    where = subprocess.run([str(python), "-c", "import clrpipe; print(clrpipe.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(python.parents[1]), where  # the wheel's
    check = subprocess.run([str(python), str(REPO / "tests" / "backend_check.py")],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert check.returncode == 0, check.stderr[-3000:]
    assert f"backend check ok: {backend}" in check.stdout, check.stdout
    script = subprocess.run([str(python.parent / "clrpipe"), "fetch"], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert (script.returncode, script.stdout, script.stderr) == (1, "", NO_PIPELINE), script
    if backend != "jax":
        return  # the README's example once, on the backend furthest from today's TensorFlow
    example = subprocess.run([str(python), "-c", FRESH_PREAMBLE + readme_example() + CHECK],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert example.returncode == 0, example.stderr[-3000:]
    assert "README example: bounds" in example.stdout

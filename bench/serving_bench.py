"""The serving part of `bench/benchmark.py` (`--serving`): a served request and batch scoring.

- latency: one 1-row request to a real `mlflow models serve` (127.0.0.1, `--env-manager
  local`), median and 90th percentile over `REQUESTS` after a warm-up, for the pyfunc the
  training stage registers (`tracking.serving`: validation, repair, features, scaling in pandas
  and numpy, then the network called directly) and for the alternative the issue named, a
  Keras model with the preprocessing as layers (the value repairs, features and scaling as
  Keras ops in front of the same trained network, logged with `mlflow.keras`); it cannot
  validate or reject rows, so it does less. Also the same 1-row call in-process.
- batch: `clrpipe predict --model models:/<name>@champion` on the raw 70,000-row table, as a
  new process (imports included), and its scoring alone in-process (read, validate, score).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

REQUESTS = 200
ROW = {"age": 18393.0, "gender": 2.0, "height": 168.0, "weight": 62.0, "ap_hi": 110.0,
       "ap_lo": 80.0, "cholesterol": 1.0, "gluc": 1.0, "smoke": 0.0, "alco": 0.0,
       "active": 1.0}


def layered_model(network, scaler: dict, limits):
    """The Keras alternative: raw columns (in `ROW`'s order) -> repairs, features, scaling as
    Keras ops -> the trained network. No validation, no rejected rows."""
    import keras
    from keras import ops

    raw = keras.Input((len(ROW),), name="raw")
    col = {name: raw[:, i] for i, name in enumerate(ROW)}
    for name in ("ap_hi", "ap_lo"):
        low, high = getattr(limits, name)
        value = ops.abs(col[name])
        for _ in range(3):  # rule 3: divide by 10 while above the maximum
            value = ops.where(value > high, value / 10.0, value)
        col[name] = ops.where((value >= low / 10.0) & (value < low), value * 10.0, value)
    hi, lo = ops.maximum(col["ap_hi"], col["ap_lo"]), ops.minimum(col["ap_hi"], col["ap_lo"])
    bmi = col["weight"] / (col["height"] / 100.0) ** 2
    features = ops.stack([
        col["age"] / 365.25, ops.cast(ops.equal(col["gender"], 2.0), "float32"),
        col["height"], col["weight"], bmi, hi, lo, hi - lo, (hi + 2.0 * lo) / 3.0,
        col["cholesterol"], col["gluc"], col["smoke"], col["alco"], col["active"]], axis=1)
    scaled = (features - np.asarray(scaler["mean"], "float32")) / np.asarray(scaler["scale"],
                                                                             "float32")
    return keras.Model(raw, network(scaled))


def serve(model_uri: str, store: str, root: Path) -> tuple[str, subprocess.Popen]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_TRACKING_URI": store, "TF_CPP_MIN_LOG_LEVEL": "3",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    log = (root / f"serve-{port}.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri,
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return url, server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop(server)
                raise RuntimeError(f"mlflow models serve {model_uri} did not start") from None
            time.sleep(0.5)


def stop(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def request_ms(url: str, body: bytes, requests: int = REQUESTS) -> dict:
    """Milliseconds of `requests` sequential POSTs after 20 warm-up ones."""
    times = []
    for i in range(requests + 20):
        request = urllib.request.Request(f"{url}/invocations", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            assert response.status == 200
        if i >= 20:
            times.append(1000 * (time.perf_counter() - started))
    times.sort()
    return {"median": statistics.median(times), "p90": times[int(0.9 * len(times))],
            "min": times[0], "requests": requests}


def in_process_ms(predict, data, repeats: int = 200) -> float:
    for _ in range(20):
        predict(data)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict(data)
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def measure_serving(project: Path, csv: Path, workdir: Path, log=print) -> dict:
    """Train a baseline (1 epoch) in a scratch copy, then time both served models and
    `clrpipe predict` on the raw table."""
    import keras
    import mlflow
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from clrpipe.pipeline import cli
    from clrpipe.pipeline.params import Limits
    from clrpipe.pipeline.tracking import registry, serving

    root = Path(tempfile.mkdtemp(prefix="serving-", dir=workdir))
    for name in ("conf", "params.yaml"):
        _copy(project / name, root / name)
    _copy(project / "data" / "split", root / "data" / "split")
    store = f"sqlite:///{root / 'mlflow.db'}"
    here = os.getcwd()
    os.chdir(root)
    try:
        log("serving: training a baseline to serve ...")
        done = CliRunner().invoke(cli.main, ["train", "baseline", "train.baseline.epochs=1"])
        assert done.exit_code == 0, done.output
        metrics = json.loads(Path("metrics/train_baseline.json").read_text())
        name, version = metrics["registered_model"], metrics["model_version"]
        client = MlflowClient(store)
        registry.promote(client, name, version)
        champion = registry.champion_uri(name)

        scaler = json.loads(Path("data/split/scaler.json").read_text())
        network = keras.saving.load_model("models/train_baseline.keras", compile=False)
        layered = layered_model(network, scaler, Limits())
        mlflow.set_tracking_uri(store)
        with mlflow.start_run():
            layered_info = mlflow.keras.log_model(layered, name="layers")
        one = np.asarray([list(ROW.values())], "float32")
        pyfunc = mlflow.pyfunc.load_model(champion)
        frame = pd.DataFrame([ROW])
        expected = pyfunc.predict(frame)["probability_1"].to_numpy()
        got = np.asarray(layered(one)).reshape(-1)
        assert np.allclose(expected, got, atol=1e-5), (expected, got)
        keras_pyfunc = mlflow.pyfunc.load_model(layered_info.model_uri)
        with contextlib.redirect_stdout(io.StringIO()):  # the Keras flavor's progress bars
            found = {
                "in_process_ms": {"pyfunc": in_process_ms(pyfunc.predict, frame),
                                  "keras_layers": in_process_ms(keras_pyfunc.predict, one)},
            }
        bodies = {"pyfunc": json.dumps({"dataframe_split": frame.to_dict(orient="split")}),
                  "keras_layers": json.dumps({"inputs": one.tolist()})}
        served = {}
        for kind, uri in (("pyfunc", champion), ("keras_layers", layered_info.model_uri)):
            log(f"serving: {kind} behind mlflow models serve ...")
            url, server = serve(uri, store, root)
            try:
                served[kind] = request_ms(url, bodies[kind].encode())
            finally:
                stop(server)
        found["request_ms"] = served
        found["request_ratio"] = served["keras_layers"]["median"] / served["pyfunc"]["median"]

        log("serving: clrpipe predict on the raw table ...")
        raw = csv.read_bytes()
        model = serving.load(champion)
        started = time.perf_counter()
        scored = serving.score(model, serving.read_rows(raw, str(csv)), str(csv))
        scoring_s = time.perf_counter() - started
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("clrpipe")), "predict", "--model",
                        champion, str(csv), str(root / "scored.csv")], cwd=root, env=env,
                       check=True, capture_output=True)
        process_s = time.perf_counter() - started
        found["predict"] = {"rows": len(scored), "process_s": process_s,
                            "scoring_s": scoring_s, "rows_per_s": len(scored) / process_s,
                            "scoring_rows_per_s": len(scored) / scoring_s,
                            "rejected": int(scored["rejected"].notna().sum())}
        return found
    finally:
        os.chdir(here)


def _copy(source: Path, target: Path) -> None:
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)


def markdown(found: dict) -> list[str]:
    """Rows of the benchmark's measurement table."""
    served, inproc, batch = found["request_ms"], found["in_process_ms"], found["predict"]
    return [
        f"| one served 1-row request, pyfunc / Keras with preprocessing layers (median, ms) "
        f"| {served['pyfunc']['median']:.1f} / {served['keras_layers']['median']:.1f} ms "
        f"(p90 {served['pyfunc']['p90']:.1f} / {served['keras_layers']['p90']:.1f}) "
        f"| {found['request_ratio']:.2f} | |",
        f"| the same call in-process, pyfunc / Keras layers (median, ms) "
        f"| {inproc['pyfunc']:.2f} / {inproc['keras_layers']:.2f} ms "
        f"| {inproc['keras_layers'] / inproc['pyfunc']:.2f} | |",
        f"| `clrpipe predict` on the raw table ({batch['rows']} rows) as a new process / "
        f"scoring alone | {batch['process_s']:.1f} s / {batch['scoring_s']:.2f} s "
        f"({batch['rows_per_s']:.0f} / {batch['scoring_rows_per_s']:.0f} rows/s) | | |",
    ]

"""A generated 300k-row table with a 60k-level text column and an identifier column through
the real `prepare` and `split` processes: the identifier is left out with a note, the wide
column becomes 32 one-hot columns (never 60k), what was done per column is in
metrics/prepare.json, the split's dataset and both MLflow runs, and the fitted preprocessor
pools an unseen value instead of dropping it. No training (the other table tests train)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from clrpipe.pipeline.data import tables

ROWS = 300_000
STREETS = 60_000


def big_table(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    numbers = rng.normal(size=(rows, 5))
    city = rng.integers(0, 40, rows)
    frame = pd.DataFrame(numbers, columns=[f"x{i}" for i in range(5)])
    frame["city"] = [f"city {c}" for c in city]
    frame["street"] = [f"street {s}" for s in rng.integers(0, STREETS, rows)]
    frame["order id"] = [f"o-{i:07d}" for i in rng.permutation(rows)]
    frame["y"] = (numbers[:, 0] + numbers[:, 1] * 0.5 + (city < 10) > 0.5).astype(int)
    return frame


@pytest.mark.slow
def test_a_wide_categorical_on_300k_rows_is_capped(project):
    raw = project / "data" / "raw" / "big.parquet"
    raw.parent.mkdir(parents=True)
    big_table().to_parquet(raw, index=False)
    exe = Path(sys.executable).with_name("clrpipe")
    done = {}
    for args in (["params", "data=table", "data.raw=data/raw/big.parquet", "data.target=y"],
                 ["prepare"], ["split"]):
        done[args[0]] = subprocess.run([str(exe), *args], cwd=project, capture_output=True,
                                       text=True, timeout=900)
        assert done[args[0]].returncode == 0, done[args[0]].stderr[-3000:]
    assert ("note: column 'order id' looks like an identifier (a distinct value in every "
            "row): left out; list it in data.categorical to use it") in done["prepare"].stderr

    report = json.loads((project / "metrics" / "prepare.json").read_text())
    streets = report["encoding"]["street"]
    levels = int(streets.split(" of ")[1].split(" ")[0])
    assert levels >= 50_000 and streets.startswith("one-hot, the 31 most frequent of")
    assert report["encoding"]["order id"] == (
        f"left out (id-like: {ROWS} distinct values in as many rows)")
    assert report["categorical"] == ["city", "street"] and report["rows_out"] == ROWS

    split = project / "data" / "split"
    dataset = json.loads((split / "dataset.json").read_text())
    assert len(dataset["features"]) == 5 + 32 + 32  # numbers, city (40 -> 32), street
    encodings = dataset["details"]["encodings"]
    assert encodings["street"]["columns"] == 32 and encodings["street"]["levels"] >= 49_000
    train = pd.read_parquet(split / "train.parquet")
    assert train.shape == (ROWS * 0.8, 5 + 32 + 32 + 1)
    one_hot = train[dataset["features"][5:]].to_numpy()
    assert (one_hot.sum(axis=1) == 2).all()  # one city and one street column in every row

    fitted = tables.Preprocessor.load(split / "preprocessor.joblib")
    row = pd.DataFrame({**{f"x{i}": [0.0] for i in range(5)}, "city": ["city 1"],
                        "street": ["a street never seen"]})
    x, counts = fitted.transform(row)
    assert x[0, fitted.features.index("street=<other>")] == 1
    assert counts["unseen_categories"] == {"city": 0, "street": 1}

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "clrpipe"]
    runs = {r.data.tags.get("clrpipe.stage"): r
            for r in client.search_runs([experiment.experiment_id])}
    assert {runs[s].info.status for s in ("prepare", "split")} == {"FINISHED"}
    logged = client.download_artifacts(runs["prepare"].info.run_id, "prepare.json")
    assert json.loads(Path(logged).read_text())["encoding"] == report["encoding"]
    logged = client.download_artifacts(runs["split"].info.run_id, "dataset.json")
    assert json.loads(Path(logged).read_text())["details"]["encodings"] == encodings

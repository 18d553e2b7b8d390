"""Any column name (spaces, parentheses, dots, slashes, unicode) through the real `prepare`,
`split` and `train baseline` stages with a real SQLite MLflow store: the names become safe
MLflow metric keys (the renaming recorded), and stay as they were in the schema, the features
and the serving model's signature, which answers raw rows with those names."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from clrpipe.pipeline import cli
from clrpipe.pipeline.data.table_schema import mlflow_key

ODD = ["blood pressure (mmHg)", "weight.kg", "km/h", "Größe", "colour: tint"]
TARGET = "ziel (ja/nein)"


def odd_table(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        ODD[0]: rng.normal(120, 15, rows).round(1),
        ODD[1]: rng.normal(70, 10, rows).round(1),
        ODD[2]: rng.uniform(0, 30, rows).round(2),
        ODD[3]: rng.normal(170, 8, rows).round(0),
        ODD[4]: rng.choice(["rot", "grün", "blau"], rows),
    })
    score = (frame[ODD[0]] - 120) / 15 + (frame[ODD[4]] == "rot") + rng.normal(0, 0.5, rows)
    frame[TARGET] = np.where(score > 0.3, "ja", "nein")
    frame.loc[::37, ODD[0]] = np.nan
    frame.loc[::41, ODD[4]] = None
    return frame


def invoke(*args: str) -> str:
    done = CliRunner().invoke(cli.main, list(args))
    assert done.exit_code == 0, (done.output, done.exception)
    return done.output


@pytest.mark.slow
def test_odd_column_names_are_tracked_and_served(project, monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (project / "data" / "raw").mkdir(parents=True)
    table = odd_table()
    table.to_csv(project / "data" / "raw" / "odd.csv", index=False)
    invoke("params", "data=table", "data.raw=data/raw/odd.csv",  # Hydra: quote a spaced value
           f"data.target='{TARGET}'", "train.baseline.epochs=2")
    for stage in (["prepare"], ["split"], ["train", "baseline"]):
        invoke(*stage)

    report = json.loads((project / "metrics" / "prepare.json").read_text())
    assert report["numeric"] == ODD[:4] and report["categorical"] == [ODD[4]]
    assert report["missing"][ODD[0]] == len(range(0, 400, 37))
    renamed = {name: mlflow_key(name) for name in [*ODD, TARGET] if mlflow_key(name) != name}
    assert set(renamed) == {ODD[0], ODD[2], ODD[4], TARGET}
    assert renamed[ODD[0]].startswith("blood pressure _mmHg__")
    del renamed[TARGET]  # the target's name is a value in the report, never a key
    assert report["mlflow_names"] == renamed

    client = MlflowClient("sqlite:///mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "clrpipe"]
    runs = {r.data.tags.get("clrpipe.stage"): r
            for r in client.search_runs([experiment.experiment_id])}
    assert {runs[s].info.status for s in ("prepare", "split", "train_baseline")} == {"FINISHED"}
    prepared = runs["prepare"].data.metrics
    assert prepared[f"missing.{renamed[ODD[0]]}"] == report["missing"][ODD[0]]
    assert prepared[f"missing.{ODD[1]}"] == 0  # a name MLflow takes stays as it is
    assert runs["train_baseline"].data.params["data.target"] == TARGET

    dataset = json.loads((project / "data" / "split" / "dataset.json").read_text())
    assert f"missing:{ODD[0]}" in dataset["features"]
    assert f"{ODD[4]}=grün" in dataset["features"]
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    info = mlflow.models.get_model_info("models:/clrpipe-odd/1")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == [*ODD]
    model = mlflow.pyfunc.load_model("models:/clrpipe-odd/1")
    answer = model.predict(table.drop(columns=[TARGET]).head(5))
    assert list(answer["prediction"]) and set(answer["prediction"]) <= {"ja", "nein"}
    trained = json.loads((project / "metrics" / "train_baseline.json").read_text())
    assert trained["auto"]["train.baseline.batch_size"] == 16

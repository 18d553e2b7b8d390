"""The serving model for real: two trained cardio models registered in a SQLite store, the
champion chosen by validation score, a real `mlflow models serve -m models:/<name>@champion`
answering raw rows (JSON and CSV) exactly as the model does in-process, bad requests refused
with HTTP 400 in one line, `clrpipe predict` and `clrpipe promote`; and a user's table (text
categories, missing values) trained, scored and served the same way."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from clrpipe.pipeline import cli
from clrpipe.pipeline.data import cardio, preprocess
from clrpipe.pipeline.params import Limits
from clrpipe.pipeline.tracking import registry
from tests import team_store
from tests.conftest import REPO, stop_server

NAME = "clrpipe-cardio"
PINNED = ("schedule.initial_learning_rate=1e-3", "schedule.maximal_learning_rate=0.05")
ROWS = 300  # raw rows posted and compared


def invoke(*args: str):
    return CliRunner().invoke(cli.main, list(args))


@pytest.fixture(scope="module")
def served(real_split, tmp_path_factory):
    """A project with both trainings (1 epoch each) and the champion stage run in-process,
    then a real scoring server on the champion: (project folder, server URL)."""
    root = tmp_path_factory.mktemp("serving")
    shutil.copytree(REPO / "conf", root / "conf")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copytree(real_split / "data" / "split", root / "data" / "split")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "DVC_ROOT"):
            mp.delenv(name, raising=False)
        for args in (("train", "baseline", "train.baseline.epochs=1"),
                     ("train", "clr", "train.clr.epochs=1", *PINNED), ("champion",)):
            done = invoke(*args)
            assert done.exit_code == 0, done.output
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        uri = f"sqlite:///{root / 'mlflow.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env |= {"MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "3",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
        log = (root / "serve.log").open("w")
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
             registry.champion_uri(NAME), "--env-manager", "local", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while not team_store.healthy(url, "ping"):
            if server.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                pytest.fail(f"mlflow models serve did not start:\n"
                            f"{(root / 'serve.log').read_text()}")
            time.sleep(0.5)
        try:
            yield root, url
        finally:
            stop_server(server)
            log.close()


@pytest.fixture(scope="module")
def raw_rows(cardio_csv) -> pd.DataFrame:
    """The first rows of the raw table (id and target included, as a user may send them) and
    rows `prepare` drops (implausible heights, blood pressures)."""
    raw = pd.read_csv(cardio_csv, sep=";")
    implausible = raw.index[(raw.height < 120) | (raw.ap_hi == raw.ap_lo)][:5]
    return pd.concat([raw.head(ROWS), raw.loc[implausible]]).reset_index(drop=True)


@pytest.fixture(scope="module")
def in_process(served, raw_rows) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{served[0] / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(registry.champion_uri(NAME))
    return model.predict(raw_rows.astype(float))


def test_champion_is_the_better_validation_score_and_its_alias_loads(served):
    root, _ = served
    scores = {stage: json.loads((root / f"metrics/{stage}.json").read_text())
              for stage in ("train_baseline", "train_clr")}
    champion = json.loads((root / "metrics/champion.json").read_text())
    best = max(scores, key=lambda s: scores[s]["final_val_accuracy"])
    assert champion["stage"] == best and champion["promoted"] is True
    assert champion["value"] == scores[best]["final_val_accuracy"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version_by_alias(NAME, "champion")
    assert str(version.version) == champion["model_version"] == scores[best]["model_version"]
    assert version.tags[registry.STAGE_TAG] == best
    assert {v.tags[registry.STAGE_TAG] for v in client.search_model_versions(f"name='{NAME}'")} \
        == set(scores)
    info = mlflow.models.get_model_info(registry.champion_uri(NAME))
    inputs = {c["name"]: c["type"] for c in info.signature.inputs.to_dict()}
    assert inputs == dict.fromkeys(preprocess.CARDIO_COLUMNS, "double")
    assert [c["name"] for c in info.signature.outputs.to_dict()] == [
        "probability_0", "probability_1", "prediction", "rejected"]
    assert info.saved_input_example_info["type"] == "dataframe"
    assert info.metadata["clrpipe"]["kind"] == "cardio"


def test_the_model_applies_prepare_and_split_to_raw_rows(served, cardio_bytes, cardio_csv):
    """On the whole raw table the model's features are `prepare` + `split`'s, row for row, and
    the rows it rejects are the rows `prepare` drops, for the same reasons."""
    root, _ = served
    scaler = json.loads((root / "data/split/scaler.json").read_text())
    fitted = preprocess.CardioPreprocessing.from_split(scaler, Limits())
    raw = pd.read_csv(cardio_csv, sep=";")
    x, rejected = fitted.features(raw)
    prepared, report, _ = cardio.prepare(cardio_bytes, "cardio", fitted.limits)
    expected = prepared[list(cardio.FEATURES)].to_numpy(np.float32)
    expected = (expected - np.asarray(scaler["mean"])) / np.asarray(scaler["scale"])
    kept = np.array([r is None for r in rejected])
    np.testing.assert_allclose(x[kept], expected, rtol=0, atol=1e-5)
    assert kept.sum() == report["rows_out"] == 69908
    reasons = pd.Series([r for r in rejected if r]).value_counts().to_dict()
    assert reasons == {k.removeprefix("dropped_"): v for k, v in report.items()
                       if k.startswith("dropped_") and "duplicate" not in k and v}
    assert np.isnan(x[~kept]).all()


def post(url: str, body: str | bytes, content_type: str = "application/json"):
    return requests.post(f"{url}/invocations", data=body, timeout=60,
                         headers={"Content-Type": content_type})


@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "csv"])
def test_served_predictions_equal_the_in_process_ones(served, raw_rows, in_process, form):
    _, url = served
    if form == "csv":
        answer = post(url, raw_rows.to_csv(index=False), "text/csv")
    else:
        orient = form.removeprefix("dataframe_")
        answer = post(url, json.dumps({form: raw_rows.to_dict(orient=orient)}))
    assert answer.status_code == 200, answer.text
    got = pd.DataFrame(answer.json()["predictions"])
    assert list(got.columns) == list(in_process.columns)
    for column in ("probability_0", "probability_1"):
        np.testing.assert_allclose(got[column].to_numpy(float),
                                   in_process[column].to_numpy(float), rtol=0, atol=1e-6)
    assert labels(got.prediction) == labels(in_process.prediction)
    assert got.rejected.fillna("").tolist() == in_process.rejected.fillna("").tolist()
    rejected = in_process.rejected.notna()
    assert rejected.sum() >= 5 and rejected.tail(5).all()  # the implausible rows, named
    assert in_process.loc[rejected, ["probability_1", "prediction"]].isna().all().all()


def labels(values: pd.Series) -> list:
    return [None if pd.isna(v) else int(v) for v in values]


def test_bad_requests_are_400_in_one_line_and_the_server_keeps_serving(served, raw_rows):
    _, url = served
    rows = raw_rows.head(3).drop(columns=["id", "cardio"])
    text = rows.astype(object)
    text.loc[1, "ap_hi"] = "abc"
    code = rows.copy()
    code.loc[2, "gender"] = 3
    cases = [
        (json.dumps({"dataframe_split": rows.drop(columns=["ap_hi"]).to_dict(orient="split")}),
         "application/json", "column 'ap_hi' missing; expected the raw columns age, gender"),
        (json.dumps({"dataframe_split": text.to_dict(orient="split")}), "application/json",
         "Failed to convert column ap_hi to type 'float64'"),
        (text.to_csv(index=False), "text/csv", "could not convert string to float: 'abc'"),
        (json.dumps({"dataframe_records": code.to_dict(orient="records")}), "application/json",
         "column 'gender' expected 1 (women) or 2 (men), got 3 (first in data row 3) in 1 row(s)"),
        (rows.head(0).to_csv(index=False), "text/csv", "no rows; expected one or more rows"),
        ("", "text/csv", "Failed to parse input as a Pandas DataFrame"),
        ("", "application/json", "Ensure that input is a valid JSON formatted string"),
    ]
    good = json.dumps({"dataframe_split": rows.to_dict(orient="split")})
    for body, kind, message in cases:
        answer = post(url, body, kind)
        assert answer.status_code == 400, (message, answer.text)
        said = answer.json()["message"]
        assert message in said, said
        if body:  # an empty JSON body: MLflow's parser adds the (empty) input on a line
            assert "\n" not in said, said
        assert post(url, good).status_code == 200


def test_predict_scores_a_raw_file_and_refuses_bad_ones_atomically(served, raw_rows,
                                                                    in_process, tmp_path,
                                                                    monkeypatch):
    root, _ = served
    monkeypatch.chdir(root)
    source = tmp_path / "raw.csv"
    raw_rows.to_csv(source, sep=";", index=False)
    out = tmp_path / "scored.csv"
    done = invoke("predict", "--model", registry.champion_uri(NAME), str(source), str(out))
    assert done.exit_code == 0, done.output
    rejected = int(in_process.rejected.notna().sum())
    assert f"predict: {len(raw_rows)} rows scored ({rejected} rejected)" in done.output
    scored = pd.read_csv(out)
    assert scored.id.tolist() == raw_rows.id.tolist()
    np.testing.assert_allclose(scored.probability_1, in_process.probability_1, atol=1e-6)
    assert scored.rejected.fillna("").tolist() == in_process.rejected.fillna("").tolist()

    bad = raw_rows.astype(object)
    bad.loc[1, "ap_hi"] = "abc"
    bad.to_csv(source, sep=";", index=False)
    before = out.read_bytes()
    done = invoke("predict", "--model", registry.champion_uri(NAME), str(source), str(out))
    assert done.exit_code == 1
    assert done.output == (f"error: {source}: column 'ap_hi' expected numbers, got 'abc' (first "
                           "in data row 2) in 1 row(s)\n")
    assert out.read_bytes() == before and sorted(tmp_path.iterdir()) == [source, out]
    done = invoke("predict", "--model", "models:/nothing@champion", str(source), str(out))
    assert done.exit_code == 1 and done.output.startswith("error: --model models:/nothing@")


def test_promote_moves_the_alias_by_version_and_by_run(served, monkeypatch):
    root, _ = served
    monkeypatch.chdir(root)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(NAME, "champion")
    current = str(champion.version)
    other = "1" if current == "2" else "2"

    def alias() -> str:
        return str(client.get_model_version_by_alias(NAME, "champion").version)

    try:
        done = invoke("promote", "--version", other)
        assert done.output == (f"promote: models:/{NAME}@champion = version {other} (was "
                               f"version {current})\n")
        assert alias() == other
        done = invoke("promote", "--run", champion.run_id)
        assert done.exit_code == 0, done.output
        assert alias() == current
        done = invoke("promote", "--version", "99")
        assert done.exit_code == 1 and done.output.startswith(
            f"error: model registry: no version 99 of '{NAME}'")
        reference = root / "reference.json"
        reference.write_text(json.dumps({"checks": [
            {"metric": "champion.value", "min": 0.5}]}))
        client.set_registered_model_alias(NAME, "champion", other)
        done = invoke("gate", "--reference", str(reference), "--promote")
        assert done.exit_code == 0, done.output
        assert alias() == current
        reference.write_text(json.dumps({"checks": [{"metric": "champion.value", "min": 0.99}]}))
        client.set_registered_model_alias(NAME, "champion", other)
        assert invoke("gate", "--reference", str(reference), "--promote").exit_code == 1
        assert alias() == other
    finally:
        client.set_registered_model_alias(NAME, "champion", current)


def test_a_table_with_categories_and_gaps_is_served_and_scored(tmp_path, monkeypatch):
    """Penguins (text categories, missing values, three classes): the training registers a
    model taking the raw columns; in-process, `clrpipe predict` and the scoring server's own
    request handling agree, and a text cell in a numeric column is one line."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    raw = tmp_path / "data" / "raw" / "penguins.csv"
    raw.parent.mkdir(parents=True)
    shutil.copy(files("palmerpenguins") / "data" / "penguins.csv", raw)
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    table = ("data=table", f"data.raw={raw}", "data.target=species")
    for args in (("prepare", *table), ("split", *table),
                 ("train", "baseline", *table, "train.baseline.epochs=5")):
        done = invoke(*args)
        assert done.exit_code == 0, done.output
    metrics = json.loads(Path("metrics/train_baseline.json").read_text())
    assert metrics["registered_model"] == "clrpipe-penguins"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    uri = f"models:/clrpipe-penguins/{metrics['model_version']}"
    model = mlflow.pyfunc.load_model(uri)
    rows = pd.read_csv(raw).head(40)
    assert rows.isna().any().any()  # gaps reach the model and are imputed
    numeric = [c["name"] for c in model.metadata.get_input_schema().to_dict()
               if c["type"] == "double"]
    expected = model.predict(rows.astype({c: float for c in numeric}))
    classes = ["Adelie", "Chinstrap", "Gentoo"]
    assert list(expected.columns) == [f"probability_{c}" for c in classes] + ["prediction"]
    np.testing.assert_allclose(expected.filter(like="probability_").sum(axis=1), 1, atol=1e-6)
    assert set(expected.prediction) <= set(classes)
    assert (expected.prediction == rows.species).mean() > 0.6

    from mlflow.pyfunc import scoring_server

    served = scoring_server.invocations(rows.to_csv(index=False), "text/csv", model,
                                        model.metadata.get_input_schema())
    assert served.status == 200
    got = pd.DataFrame(json.loads(served.response)["predictions"])
    np.testing.assert_allclose(got.filter(like="probability_"),
                               expected.filter(like="probability_"), atol=1e-6)
    done = invoke("predict", "--model", uri, str(raw), "scored.parquet", *table)
    assert done.exit_code == 0, done.output
    scored = pd.read_parquet("scored.parquet")
    np.testing.assert_allclose(scored.head(40).filter(like="probability_"),
                               expected.filter(like="probability_"), atol=1e-6)
    bad = rows.astype(object)
    bad.loc[3, "bill_length_mm"] = "long"
    bad.to_csv("bad.csv", index=False)
    done = invoke("predict", "--model", uri, "bad.csv", "bad_scored.csv", *table)
    assert done.exit_code == 1 and not Path("bad_scored.csv").exists()
    assert done.output == ("error: bad.csv: column 'bill_length_mm' expected numbers, got "
                           "'long' (first in data row 4) in 1 row(s)\n")


def test_champion_stage_without_tracking_records_its_choice_and_refuses_missing_metrics(project):
    metrics = project / "metrics"
    metrics.mkdir()
    for stage, score in (("train_baseline", 0.73), ("train_clr", 0.74)):
        (metrics / f"{stage}.json").write_text(json.dumps({"final_val_accuracy": score}))
    done = invoke("champion", "tracking.enabled=false")
    assert done.exit_code == 0, done.output
    assert done.output == ("champion: train_clr (final_val_accuracy 0.7400); alias not moved "
                           "-> metrics/champion.json\n")
    chosen = json.loads((metrics / "champion.json").read_text())
    assert (chosen["stage"], chosen["promoted"], chosen["model_version"]) == \
        ("train_clr", False, None)
    assert chosen["candidates"] == {"train_baseline": 0.73, "train_clr": 0.74}
    (metrics / "champion.json").unlink()
    (metrics / "train_clr.json").unlink()
    done = invoke("champion", "tracking.enabled=false")
    assert done.exit_code == 1
    assert done.output == ("error: metrics/train_clr.json: not found; run `clrpipe train clr` "
                           "first\n")
    assert not (metrics / "champion.json").exists()


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_table_preprocessing_names_classes_and_decodes_regression(task):
    """The pure core on a small table: a text column with a gap, a numeric one with a gap;
    binary probabilities named by label, regression answers in the target's units."""
    from clrpipe.errors import ClrpipeError
    from clrpipe.pipeline.data import tables

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"size": rng.normal(10, 2, 40), "colour": rng.choice(["red", "blue"], 40)})
    frame.loc[3, "size"], frame.loc[4, "colour"] = np.nan, None
    frame["y"] = rng.choice(["no", "yes"], 40) if task == "binary" else rng.normal(100, 15, 40)
    schema = tables.TableSchema("y", task, False, ("size",), ("colour",),
                                ("no", "yes") if task == "binary" else None)
    fitted = preprocess.TablePreprocessing(tables.Preprocessor.fit(frame, schema, "impute"))
    x, rejected = fitted.features(frame.drop(columns=["y"]).astype({"size": object}))
    expected, _ = fitted.fitted.transform(frame)
    np.testing.assert_allclose(x, expected)
    assert rejected == [None] * 40
    out = fitted.predictions(np.full((40, 1), 0.25), rejected)
    if task == "binary":
        assert list(out.columns) == ["probability_no", "probability_yes", "prediction"]
        assert out.probability_yes.tolist() == [0.25] * 40 and set(out.prediction) == {"no"}
    else:
        y = frame.y.to_numpy()
        np.testing.assert_allclose(out.prediction, 0.25 * y.std() + y.mean())
    with pytest.raises(ClrpipeError, match=r"^column 'size' expected numbers, got 'big' "
                                           r"\(first in data row 2\) in 1 row\(s\)$"):
        fitted.features(pd.DataFrame({"size": ["1", "big"], "colour": ["red", "red"]}))

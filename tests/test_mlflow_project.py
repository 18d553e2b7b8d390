"""`mlflow run` and MLflow servers: the MLproject entry points, `mlflow run . -e train` against a
real `mlflow server`, a stage logging to a server recording what it records in SQLite, where runs
go ($MLFLOW_TRACKING_URI over `tracking.uri`), and the remote-execution files, which are
validated but cannot be run here (no Docker daemon, registry or Kubernetes cluster)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.projects import _parse_kubernetes_config
from mlflow.projects._project_spec import load_project
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from clrpipe import keras_private, schedules
from clrpipe.pipeline import config
from clrpipe.pipeline.data import cardio
from clrpipe.pipeline.tracking import runs, serving

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KUBE = REPO / "deploy" / "kubernetes"
PINNED = "schedule.initial_learning_rate=1e-4 schedule.maximal_learning_rate=1e-2"
TIMING_METRICS = {"epoch_seconds", "epoch_seconds_median", "train_seconds"}


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell in the project: clrpipe on PATH, no MLflow run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "DVC_ROOT")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


@pytest.fixture
def mlflow_project(trained_project: Path) -> Path:
    """A scratch project (real split, conf, params.yaml) with the MLproject files."""
    for name in ("MLproject", "python_env.yaml"):
        shutil.copy(REPO / name, trained_project / name)
    return trained_project


def runs_by_stage(client: MlflowClient, experiment: str, stage: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{runs.STAGE_TAG}` = '{stage}'"
    )


# --- where runs go -------------------------------------------------------------------------


def test_tracking_uri_env_overrides_config(project):
    assert runs.store_uri("http://server:5000", {}) == "http://server:5000"
    assert runs.store_uri("sqlite:///mlflow.db", {"MLFLOW_TRACKING_URI": ""}) == (
        f"sqlite:///{project / 'mlflow.db'}"
    )
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert runs.store_uri("sqlite:///mlflow.db", env) == "http://127.0.0.1:5000"
    env = {"MLFLOW_TRACKING_URI": "sqlite:///other.db"}
    assert runs.store_uri("http://server:5000", env) == f"sqlite:///{project / 'other.db'}"


def test_stage_under_mlflow_run_goes_to_the_parents_store_and_experiment(project, monkeypatch):
    """What `mlflow run` hands a command: MLFLOW_RUN_ID, MLFLOW_TRACKING_URI and
    MLFLOW_EXPERIMENT_ID. The child lands under that run, in its store and experiment, whatever
    `tracking.uri` and `tracking.experiment` say, and the fluent API raises no "active run ID
    does not match" error."""
    store = f"sqlite:///{project / 'launcher.db'}"
    client = MlflowClient(store)
    experiment_id = client.create_experiment("some-exp")
    parent = client.create_run(experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", parent)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    monkeypatch.delenv("DVC_ROOT", raising=False)

    cfg = config.load(["tracking.experiment=elsewhere"])
    with runs.stage_run(cfg, "unit") as run:
        run.log_metrics({"x": 1.0})
        mlflow.log_param("fluent", "yes")

    assert "MLFLOW_RUN_ID" not in os.environ
    assert not (project / "mlflow.db").exists()
    (child,) = client.search_runs([experiment_id], filter_string="tags.`clrpipe.stage` = 'unit'")
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.info.status == "FINISHED"
    assert child.data.metrics == {"x": 1.0}
    assert child.data.params["fluent"] == "yes"
    assert child.data.params["tracking.uri"] == "sqlite:///mlflow.db"
    assert client.get_experiment_by_name("elsewhere") is None


# --- MLproject -----------------------------------------------------------------------------

PARAMS_KEYS = {
    "train": {"epochs": "train.{variant}.epochs", "seed": "train.seed"},
    "range_test": {"seeds": "range_test.seeds", "num_steps": "range_test.num_steps"},
    "split": {"seed": "split.seed", "test_size": "split.test_size"},
    "prepare": {"raw": "data.raw"},
    "compare": {"seeds": "compare.seeds"},
    "study": {"seeds": "study.seeds"},
}


def _params_value(key: str):
    return OmegaConf.select(OmegaConf.load(REPO / "params.yaml"), key)


@pytest.mark.parametrize("folder", [REPO, KUBE], ids=["local", "kubernetes"])
def test_entry_point_defaults_are_params_yaml_values(folder):
    project = load_project(str(folder))
    assert project.name == "clrpipe"
    for entry, keys in PARAMS_KEYS.items():
        if entry not in project._entry_points:
            continue
        parameters = project.get_entry_point(entry).parameters
        for name, key in keys.items():
            if name not in parameters:
                continue
            for variant in ("baseline", "clr"):
                expected = _params_value(key.format(variant=variant))
                assert str(parameters[name].default) == str(expected), (entry, name, variant)
    train = project.get_entry_point("train").parameters
    assert train["variant"].default == "clr"
    defaults = yaml.safe_load((REPO / "conf/config.yaml").read_text())["defaults"]
    (schedule,) = [d["schedule"] for d in defaults if isinstance(d, dict) and "schedule" in d]
    assert train["schedule"].default == schedule


def test_mlproject_entry_points_pass_hydra_overrides():
    project = load_project(str(REPO))
    assert project.env_type == "python_env"
    assert Path(project.env_config_path) == REPO / "python_env.yaml"
    assert set(project._entry_points) == {
        "main", "prepare", "split", "range_test", "train", "compare", "predict", "study"
    }
    for entry in project._entry_points.values():
        assert entry.parameters["overrides"].default == ""
        assert {p.type for p in entry.parameters.values()} <= {"string", "float"}
    train = project.get_entry_point("train")
    command = train.compute_command(
        {"variant": "baseline", "epochs": "3", "overrides": "model.units=[8,4] +a.b='x y'"}, None
    )
    assert command == (
        "xargs clrpipe train baseline schedule=triangular train.baseline.epochs=3 train.seed=42"
        " <<< 'model.units=[8,4] +a.b='\"'\"'x y'\"'\"''"
    )
    words = subprocess.run(
        ["bash", "-c", command.replace("xargs clrpipe", "xargs printf '%s\\n'")],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert words[-2:] == ["model.units=[8,4]", "+a.b=x y"]
    main = project.get_entry_point("main").compute_command({}, None)
    assert main == "xargs clrpipe params <<< '' && dvc repro"


@pytest.mark.slow
def test_mlflow_run_train_against_a_server(mlflow_server, mlflow_project):
    done = subprocess.run(
        [
            str(BIN / "mlflow"), "run", ".", "-e", "train",
            "-P", "variant=clr", "-P", "epochs=2", "-P", f"overrides={PINNED}",
            "--env-manager", "local", "--experiment-name", "some-exp",
        ],
        cwd=mlflow_project, env=child_env(MLFLOW_TRACKING_URI=mlflow_server),
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (mlflow_project / "mlflow.db").exists()
    client = MlflowClient(mlflow_server)
    (child,) = runs_by_stage(client, "some-exp", "train_clr")
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.project.entryPoint"] == "train"
    assert parent.data.params["variant"] == "clr"
    assert parent.data.params["epochs"] == "2"
    assert f"=== Run (ID '{parent.info.run_id}') succeeded ===" in done.stderr

    assert child.info.status == "FINISHED"
    assert child.info.experiment_id == parent.info.experiment_id
    params = child.data.params
    assert params["schedule.policy"] == "triangular"
    assert params["train.clr.epochs"] == "2"
    assert params["train.seed"] == "42"
    assert params["schedule.initial_learning_rate"] == "0.0001"
    assert params["schedule.maximal_learning_rate"] == "0.01"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [0, 1]
    written = json.loads((mlflow_project / "metrics/train_clr.json").read_text())
    assert child.data.metrics["test_accuracy"] == pytest.approx(written["test_accuracy"])
    plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
    assert plots == {"plots/curves.png", "plots/lr.png"}

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.keras.load_model(f"runs:/{child.info.run_id}/model")  # needs clrpipe.schedules
    schedule = keras_private.learning_rate_schedule(model.optimizer)
    assert isinstance(schedule, schedules.CyclicalLearningRate)
    test = pd.read_parquet(mlflow_project / "data/split/test.parquet")
    x = test[list(cardio.FEATURES)].to_numpy("float32")[:256]
    in_memory = keras.models.load_model(mlflow_project / "models/train_clr.keras")
    np.testing.assert_allclose(
        model.predict(x, verbose=0).ravel(), in_memory.predict(x, verbose=0).ravel(), rtol=1e-6
    )


def _stage_record(uri: str, experiment: str, stage: str) -> dict:
    """Everything a stage's run holds, in a form two stores can be compared by."""
    client = MlflowClient(uri)
    (run,) = runs_by_stage(client, experiment, stage)
    run_id = run.info.run_id
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    mlflow.set_tracking_uri(uri)
    logged_models = mlflow.search_logged_models(  # the Keras network and the serving model
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    histories = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in run.data.metrics
    }
    return {
        "status": run.info.status,
        "parent": (parent.info.status, parent.data.tags[runs.PIPELINE_TAG]),
        "params": {k: v for k, v in run.data.params.items() if k != "tracking.uri"},
        "tags": sorted(run.data.tags),
        "metric_steps": {k: [step for step, _ in h] for k, h in histories.items()},
        "metric_values": {
            k: [value for _, value in h] for k, h in histories.items() if k not in TIMING_METRICS
        },
        "artifacts": sorted(
            a.path for folder in ("plots", "model") for a in client.list_artifacts(run_id, folder)
        ),
        "models": sorted(
            (logged.name, logged.source_run_id == run_id, str(logged.status),
             tuple(sorted(Path(a.path).name
                          for a in client.list_logged_model_artifacts(logged.model_id))))
            for logged in logged_models
        ),
        "datasets": sorted(
            (d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs
        ),
    }


@pytest.mark.slow
def test_server_uri_records_what_sqlite_records(mlflow_server, trained_project):
    """Issue 6: `tracking.uri=http://...` works the same as the default SQLite store."""
    common = ["train", "baseline", "train.baseline.epochs=2", "tracking.experiment=same"]
    for extra in ([f"tracking.uri={mlflow_server}"], []):
        done = subprocess.run(
            [str(BIN / "clrpipe"), *common, *extra],
            cwd=trained_project, env=child_env(), capture_output=True, text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    sqlite = _stage_record(f"sqlite:///{trained_project / 'mlflow.db'}", "same", "train_baseline")
    server = _stage_record(mlflow_server, "same", "train_baseline")
    assert sqlite["status"] == "FINISHED"
    assert sqlite["metric_steps"]["val_accuracy"] == [0, 1]
    assert "model/input_example.json" in sqlite["artifacts"]
    assert [name for name, *_ in sqlite["models"]] == sorted(["model", serving.MODEL_NAME])
    assert all("MLmodel" in files for *_, files in sqlite["models"])
    for key, value in sqlite.items():
        assert server[key] == value, key


# --- remote execution files -----------------------------------------------------------------


def test_kubernetes_backend_config_loads_as_mlflow_parses_it(monkeypatch):
    monkeypatch.chdir(REPO)
    raw = json.loads((KUBE / "kubernetes_config.json").read_text())
    assert {"kube-context", "repository-uri", "kube-job-template-path"} <= set(raw)
    parsed = _parse_kubernetes_config(raw)
    job = parsed["kube-job-template"]
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "Job"
    assert job["metadata"]["name"] == "{replaced with MLflow Project name}"
    assert job["metadata"]["namespace"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0
    container = pod["containers"][0]
    assert container["name"] == "{replaced with MLflow Project name}"
    assert container["image"].startswith("{replaced with URI of Docker image")
    assert container["command"] == ["{replaced with MLflow Project entry point command}"]
    assert all(isinstance(item, dict) and "name" in item for item in container.get("env", []))
    assert container["workingDir"] == _dockerfile_workdir()
    mounts = {m["name"] for m in container.get("volumeMounts", [])}
    assert mounts <= {v["name"] for v in pod.get("volumes", [])}


def test_kubernetes_mlproject_runs_in_docker_with_shell_free_commands():
    project = load_project(str(KUBE))
    assert project.env_type == "docker_env"
    assert project.docker_env["image"].split("/")[-1].startswith("clrpipe:")
    assert set(project._entry_points) == {"main", "prepare", "range_test", "train"}
    # Job and container names derive from the project name: DNS labels, <= 63 characters.
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", project.name)
    assert len(f"{project.name}-2026-11-25-10-00-00-000000") <= 63
    local = load_project(str(REPO))
    examples = {"variant": "baseline", "schedule": "triangular2", "epochs": "3", "seeds": "5"}
    for name, entry in project._entry_points.items():
        typed = {k: p.default for k, p in local.get_entry_point(name).parameters.items()}
        typed.pop("overrides")
        remote = {k: p.default for k, p in entry.parameters.items()}
        if name in ("train", "range_test"):
            assert remote == typed, name
        assert remote.items() <= typed.items(), name
        for given in ({}, {k: v for k, v in examples.items() if k in entry.parameters}):
            command = entry.compute_command(given, None)
            # mlflow.projects.kubernetes._get_run_command: the container's argv is
            # [quote(word) for word in shlex.split(command)], with no shell to undo the quoting.
            words = shlex.split(command)
            assert [shlex.quote(w) for w in words] == words, command
            assert words[0] in ("clrpipe", "dvc"), command


def _dockerfile() -> list[tuple[str, str]]:
    lines = (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _dockerfile_workdir() -> str:
    return [args for op, args in _dockerfile() if op == "WORKDIR"][-1]


def _dockerignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    rules = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for rule in rules:
        pattern = rule.lstrip("!")
        if pattern.startswith("**/"):
            hit = any(fnmatch(Path(c).name, pattern[3:]) for c in candidates)
        else:
            hit = any(fnmatch(c, pattern) for c in candidates)
        if hit:
            ignored = not rule.startswith("!")
    return ignored


def test_dockerfile_installs_the_locked_project():
    steps = _dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    uv_pin = re.search(r"uv==[\d.]+", (REPO / "README.md").read_text()).group()
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert f"pip install --no-cache-dir {uv_pin}" in runs
    assert "uv sync --frozen --no-dev" in runs
    env = " ".join(args for op, args in steps if op == "ENV")
    venv = re.search(r"UV_PROJECT_ENVIRONMENT=(\S+)", env).group(1)
    assert f"PATH={venv}/bin:" in env
    copied = []
    for op, args in steps:
        if op == "COPY":
            copied += args.split()[:-1]
    for source in copied:
        assert (REPO / source).exists(), source
        assert not _dockerignored(source.rstrip("/")), f"{source} is excluded by .dockerignore"
        for tracked in subprocess.run(
            ["git", "ls-files", source], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split():
            assert not _dockerignored(tracked) or "__pycache__" in tracked, tracked
    for needed in ("src/clrpipe/pipeline/cli.py", "conf/config.yaml", "params.yaml", "dvc.yaml",
                   "metrics/range_test.json", ".dvc/config", "uv.lock"):
        assert any(needed == s.rstrip("/") or needed.startswith(s) for s in copied), needed
    for excluded in (".venv", "legacy/.venv", "data/raw/cardio_train.csv", "mlflow.db", ".git",
                     ".dvc/cache", "models/train_clr.keras"):
        assert _dockerignored(excluded), excluded

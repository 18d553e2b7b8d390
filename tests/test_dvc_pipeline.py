"""The DVC pipeline for real: `dvc repro`, `dvc exp run -S`, `dvc queue` and `dvc plots show`.

One module-scoped temporary git repo holds the project's `src/` (dvc.yaml names its modules as
deps), `conf/`, `dvc.yaml`, `.dvc/config` (Hydra enabled) and `.dvc/plots/`, the real table in
`data/raw`, and a small configuration written into `conf/` itself: `dvc exp run -S` composes
params.yaml from conf/, so a small params.yaml alone would be overwritten by the full one. The
stages run the installed `clrpipe` (the venv's bin dir is put first on PATH). One `dvc repro` is
shared; every test that changes the workspace puts it back to that commit afterwards.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = {
    "train.baseline.epochs": 2,
    "train.clr.epochs": 2,
    "range_test.num_steps": 100,
    "range_test.seeds": 1,
}
SMALL_IF_GROUP = {
    "compare": {
        "compare.seeds": 2,
        "compare.epochs": 2,
        "compare.select": ["clr_triangular", "hgb"],
    }
}
TRACKED_STAGES = {"range_test", "train_baseline", "train_clr"}
RAN = re.compile(r"Running stage '([^']+)'")


@dataclass
class Pipeline:
    root: Path
    env: dict[str, str]
    repro_output: str

    def run(self, *args: str, timeout: float = 900, check: bool = True):
        """Run a command in the repo; on failure, fail with its output's tail."""
        done = subprocess.run(
            [str(a) for a in args], cwd=self.root, env=self.env, capture_output=True,
            text=True, timeout=timeout,
        )
        if check and done.returncode != 0:
            tail = (done.stdout + done.stderr)[-4000:]
            pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n{tail}")
        return done

    def dvc(self, *args: str, timeout: float = 900, check: bool = True):
        return self.run(BIN / "dvc", *args, timeout=timeout, check=check)

    def reset(self) -> None:
        """Back to the reproduced commit: tracked files from git, outputs from the DVC cache."""
        self.run("git", "reset", "-q", "--hard", "HEAD")
        self.dvc("checkout", "--force")
        assert self.status() == {}

    def status(self) -> dict:
        return json.loads(self.dvc("status", "--json").stdout or "{}")

    def read_json(self, path: str) -> dict:
        return json.loads((self.root / path).read_text())

    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())


def chosen_options(root: Path) -> dict[str, str]:
    """Group -> option of conf/config.yaml's defaults list (`_self_` skipped)."""
    chosen: dict[str, str] = {}
    for entry in OmegaConf.load(root / "conf" / "config.yaml").get("defaults", []):
        if not isinstance(entry, str):
            chosen.update(OmegaConf.to_container(entry))
    return chosen


def set_conf(root: Path, key: str, value) -> None:
    """Set an existing `key` in the conf/ file that defines it (a group's chosen option, else
    config.yaml), so that Hydra's composition (`clrpipe params`, `dvc exp run`) yields it."""
    chosen = chosen_options(root)
    group, _, inner = key.partition(".")
    if group in chosen:
        path = root / "conf" / group / f"{chosen[group]}.yaml"
    else:
        path, inner = root / "conf" / "config.yaml", key
    node = OmegaConf.load(path)
    assert OmegaConf.select(node, inner, default=KeyError) is not KeyError, f"{path}: no {inner}"
    OmegaConf.update(node, inner, value, merge=False)
    OmegaConf.save(node, path)


def dependents(root: Path, key: str) -> set[str]:
    """Stages that declare a param covering `key`, plus every stage downstream of them (by
    literal dep/out paths), read from dvc.yaml: what changing `key` must rerun."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]

    def paths(entries) -> set[str]:
        return {next(iter(e)) if isinstance(e, dict) else e for e in entries or []}

    outs = {
        name: paths(s.get("outs")) | paths(s.get("metrics")) | paths(s.get("plots"))
        for name, s in stages.items()
    }
    found = {
        name
        for name, s in stages.items()
        if any(key == p or key.startswith(f"{p}.") for p in s.get("params", []))
    }
    grew = True
    while grew:
        produced = set().union(*(outs[name] for name in found))
        more = {n for n, s in stages.items() if paths(s.get("deps")) & produced} - found
        found |= more
        grew = bool(more)
    return found


def ran(output: str) -> set[str]:
    return set(RAN.findall(output))


def all_runs(client: MlflowClient, filter_string: str = "") -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=filter_string)


def runs_by_tag(client: MlflowClient, tag: str, value: str) -> list:
    return all_runs(client, f"tags.`{tag}` = '{value}'")


def build_repo(root: Path, site_cache: Path) -> Pipeline:
    """A git + DVC repo of the project in `root`: `src/`, `conf/`, `dvc.yaml`, the lock files
    and legacy files the stages depend on, DVC's config (Hydra enabled) and plot templates."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("src", "conf"):
        shutil.copytree(REPO / folder, root / folder, ignore=skip)
    for name in ("dvc.yaml", ".gitignore", "uv.lock", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    (root / "legacy").mkdir()
    for name in ("tfa_train.py", "tfa_common.py", "pyproject.toml", "uv.lock"):  # tfa bridge
        shutil.copy(REPO / "legacy" / name, root / "legacy" / name)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(site_cache),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    repo = Pipeline(root, env, "")
    repo.run("git", "init", "-q", "-b", "main")
    repo.run("git", "config", "user.name", "clrpipe test")
    repo.run("git", "config", "user.email", "test@clrpipe.invalid")
    repo.dvc("init", "-q")
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    return repo


def build(root: Path, cardio_csv: Path, site_cache: Path) -> Pipeline:
    """The project's repo (`build_repo`) with the real table in `data/raw` and the small
    configuration, after one `dvc repro`, committed (params.yaml, dvc.lock, metrics, plots)."""
    repo = build_repo(root, site_cache)
    (root / "data" / "raw").mkdir(parents=True)
    shutil.copy(cardio_csv, root / "data" / "raw" / "cardio_train.csv")
    for key, value in SMALL.items():
        set_conf(root, key, value)
    for group, settings in SMALL_IF_GROUP.items():
        if group in chosen_options(root):
            for key, value in settings.items():
                set_conf(root, key, value)
    repo.run(BIN / "clrpipe", "params")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "small clrpipe project")

    done = repo.dvc("repro")
    repo.repro_output = done.stdout + done.stderr
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "reproduced")
    return repo


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, cardio_csv) -> Pipeline:
    """The shared reproduced repo (see `build`)."""
    return build(
        tmp_path_factory.mktemp("dvc_repo"), cardio_csv, tmp_path_factory.mktemp("dvc_site")
    )


def test_repro_builds_every_stage_and_tracks_it(pipeline):
    root = pipeline.root
    stages = set(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    assert ran(pipeline.repro_output) == stages

    report = pipeline.read_json("metrics/prepare.json")
    assert (report["rows_in"], report["rows_out"]) == (70000, 69908)
    for name in ("train.parquet", "test.parquet", "scaler.json"):
        assert (root / "data" / "split" / name).stat().st_size > 0

    bounds = pipeline.read_json("metrics/range_test.json")
    assert 0 < bounds["base_lr"] < bounds["max_lr"] <= 10
    with (root / "plots" / "range_test" / "sweep.csv").open() as handle:
        sweep = list(csv.DictReader(handle))
    assert 10 <= len(sweep) <= 100 and {row["seed"] for row in sweep} == {"0"}
    assert (root / "plots" / "range_test" / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    for stage in ("train_baseline", "train_clr"):
        metrics = pipeline.read_json(f"metrics/{stage}.json")
        assert metrics["epochs"] == 2
        assert 0.65 < metrics["test_accuracy"] < 0.8, metrics
        assert (root / "models" / f"{stage}.keras").read_bytes()[:2] == b"PK"
        with (root / "plots" / stage / "history.csv").open() as handle:
            history = list(csv.DictReader(handle))
        assert [row["epoch"] for row in history] == ["1", "2"]
        assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(history[0])
        with (root / "plots" / stage / "lr.csv").open() as handle:
            lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
        assert lrs and all(lr > 0 for lr in lrs)
    with (root / "plots" / "train_baseline" / "lr.csv").open() as handle:
        assert all(float(row["lr"]) == pytest.approx(0.01) for row in csv.DictReader(handle))

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = all_runs(client)
    pipelines = [r for r in runs if "clrpipe.pipeline" in r.data.tags]
    assert len(pipelines) == 1
    parent_id = pipelines[0].info.run_id
    children = {
        r.data.tags["clrpipe.stage"]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent_id and "clrpipe.stage" in r.data.tags
    }
    assert set(children) >= TRACKED_STAGES
    for stage in TRACKED_STAGES:
        assert children[stage].info.status == "FINISHED"
        assert children[stage].data.params["train.clr.epochs"] == "2"
    for stage in ("train_baseline", "train_clr"):
        logged = children[stage].data.metrics["test_accuracy"]
        assert logged == pytest.approx(pipeline.read_json(f"metrics/{stage}.json")["test_accuracy"])


def test_second_repro_runs_nothing(pipeline):
    client = MlflowClient(f"sqlite:///{pipeline.root / 'mlflow.db'}")
    before = len(all_runs(client))
    done = pipeline.dvc("repro")
    assert ran(done.stdout + done.stderr) == set()
    assert "Data and pipelines are up to date." in done.stdout
    assert pipeline.status() == {}
    assert len(all_runs(client)) == before


def test_one_param_reruns_exactly_its_dependents(pipeline):
    root = pipeline.root
    expected = dependents(root, "schedule.step_size_epochs")
    assert "train_clr" in expected
    assert not expected & {"fetch", "prepare", "split", "range_test", "train_baseline"}
    untouched = {p: (root / p).read_bytes() for p in
                 ("metrics/range_test.json", "metrics/train_baseline.json")}
    lr_before = (root / "plots/train_clr/lr.csv").read_text()
    try:
        set_conf(root, "schedule.step_size_epochs", 1)
        pipeline.run(BIN / "clrpipe", "params")
        # champion's deps (the training metrics) change only once train_clr has rerun
        assert set(pipeline.status()) == expected - {"champion"}
        done = pipeline.dvc("repro")
        assert ran(done.stdout + done.stderr) == expected
        assert pipeline.params()["schedule"]["step_size_epochs"] == 1
        assert (root / "plots/train_clr/lr.csv").read_text() != lr_before
        assert {p: (root / p).read_bytes() for p in untouched} == untouched
        assert pipeline.status() == {}
    finally:
        pipeline.reset()


def test_exp_run_set_composes_params_and_reaches_code_and_mlflow(pipeline):
    """`dvc exp run --temp -S`: Hydra composes params.yaml from conf/ with a group choice and a
    value; the run happens in a temporary copy, yet MLflow writes to the project's SQLite store
    (the relative URI is resolved against $DVC_ROOT, which DVC points at the project)."""
    root = pipeline.root
    name = "tri2-e3"
    workspace_params = (root / "params.yaml").read_text()
    try:
        done = pipeline.dvc(
            "exp", "run", "--temp", "-n", name,
            "-S", "schedule=triangular2", "-S", "train.clr.epochs=3",
        )
        expected = dependents(root, "train.clr.epochs") | dependents(root, "schedule.policy")
        assert ran(done.stdout + done.stderr) == expected == {"train_clr", "champion"}
        assert (root / "params.yaml").read_text() == workspace_params

        shown = json.loads(pipeline.dvc("exp", "show", "--json").stdout)
        exp = find_exp(shown, name)
        params = exp["params"]["params.yaml"]["data"]
        assert params["schedule"]["policy"] == "triangular2"
        assert params["schedule"]["initial_learning_rate"] == pytest.approx(1e-4)
        assert params["train"]["clr"]["epochs"] == 3
        assert params["range_test"]["num_steps"] == 100  # composed from the small conf/
        assert exp["metrics"]["metrics/train_clr.json"]["data"]["epochs"] == 3

        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        tracked = runs_by_tag(client, "dvc.exp_name", name)
        clr = [r for r in tracked if r.data.tags.get("clrpipe.stage") == "train_clr"]
        assert len(clr) == 1 and clr[0].info.status == "FINISHED"
        assert clr[0].data.params["schedule.policy"] == "triangular2"
        assert clr[0].data.params["train.clr.epochs"] == "3"
        assert clr[0].data.metrics["epochs"] == 3
        parent_id = clr[0].data.tags["mlflow.parentRunId"]
        assert client.get_run(parent_id).data.tags["dvc.exp_name"] == name
    finally:
        pipeline.reset()


def test_exp_run_reshuffle_reruns_every_training(pipeline):
    """`train.reshuffle` changes how both trainings and the comparison train: an experiment
    setting it must rerun them (it once was in no stage's params, so DVC reused old results)."""
    root = pipeline.root
    name = "reshuffled"
    before = {stage: pipeline.read_json(f"metrics/{stage}.json")
              for stage in ("train_baseline", "train_clr")}
    try:
        done = pipeline.dvc("exp", "run", "--temp", "-n", name, "-S", "train.reshuffle=true")
        expected = dependents(root, "train.reshuffle")
        assert {"train_baseline", "train_clr", "compare"} <= expected
        assert ran(done.stdout + done.stderr) == expected
        exp = find_exp(json.loads(pipeline.dvc("exp", "show", "--json").stdout), name)
        assert exp["params"]["params.yaml"]["data"]["train"]["reshuffle"] is True
        for stage, metrics in before.items():
            reshuffled = exp["metrics"][f"metrics/{stage}.json"]["data"]
            assert reshuffled["train_accuracy"] != metrics["train_accuracy"], stage
    finally:
        pipeline.reset()


def find_exp(shown, name: str) -> dict:
    """The `data` of experiment `name` anywhere in `dvc exp show --json` output."""
    stack = [shown]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("name") == name and isinstance(node.get("data"), dict):
                return node["data"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    pytest.fail(f"experiment {name} not in dvc exp show --json")


def test_queue_two_experiments_in_parallel_against_a_postgres_server(pipeline, postgres_server):
    """Two queued experiments run by two DVC workers at once, both logging to a team's
    `clrpipe server` on PostgreSQL: every stage run FINISHED there, none in the local store."""
    mlflow_server = postgres_server
    root = pipeline.root
    experiments = {"q-tri2": "triangular2", "q-exprange": "exp_range"}
    try:
        sets = {name: ["-S", f"schedule={policy}", "-S", f"tracking.uri={mlflow_server}"]
                for name, policy in experiments.items()}
        status = run_queue(pipeline, sets, jobs=2)
        for name in experiments:
            assert re.search(rf"{name}\s.*Success", status), status

        shown = json.loads(pipeline.dvc("exp", "show", "--json").stdout)
        for name, policy in experiments.items():
            exp = find_exp(shown, name)
            assert exp["params"]["params.yaml"]["data"]["schedule"]["policy"] == policy
            assert exp["params"]["params.yaml"]["data"]["tracking"]["uri"] == mlflow_server

        client = MlflowClient(mlflow_server)
        expected = dependents(root, "schedule.policy") & TRACKED_STAGES
        for name, policy in experiments.items():
            tracked = runs_by_tag(client, "dvc.exp_name", name)
            stages = {r.data.tags.get("clrpipe.stage"): r for r in tracked}
            assert expected <= set(stages), (name, sorted(filter(None, stages)))
            assert stages["train_clr"].data.params["schedule.policy"] == policy
            assert any("clrpipe.pipeline" in r.data.tags for r in tracked)
        every = all_runs(client)
        assert every and all(r.info.status == "FINISHED" for r in every)
        local = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        assert not any(runs_by_tag(local, "dvc.exp_name", name) for name in experiments)
    finally:
        pipeline.reset()


def run_queue(pipeline: Pipeline, sets: dict[str, list[str]], jobs: int) -> str:
    """Queue one experiment per name, run the queue with `jobs` workers, return the status.

    DVC's parallel workers race (treeverse/dvc#8763, #10673, open): now and then a task fails
    before any stage runs, with no stage output in `dvc queue logs`. Such a task is queued again
    once and run by one worker; a task that failed inside a stage fails the test with its log.
    """
    for name, args in sets.items():
        pipeline.dvc("exp", "run", "--queue", "-n", name, *args)
    pipeline.dvc("queue", "start", "-j", str(jobs))
    status = _wait_for_queue(pipeline, timeout=1200)
    lost = []
    for name in sets:
        if re.search(rf"{name}\s.*Success", status):
            continue
        log = pipeline.dvc("queue", "logs", name, check=False)
        text = log.stdout + log.stderr
        workers = "".join(p.read_text(errors="replace")[-3000:] for p in
                          (pipeline.root / ".dvc" / "tmp" / "exps" / "celery").glob("*.out"))
        in_stage = "Running stage" in text or "failed to reproduce" in text
        assert not in_stage, f"{name} failed in a stage:\n{text[-4000:]}"
        lost.append(name)
        print(f"{name}: lost to DVC's worker race, queued again; workers said:\n{workers}")
    if not lost:
        return status
    pipeline.dvc("queue", "remove", "--failed")
    for name in lost:
        pipeline.dvc("exp", "run", "--queue", "-n", name, *sets[name])
    pipeline.dvc("queue", "start", "-j", "1")
    return _wait_for_queue(pipeline, timeout=1200)


def _wait_for_queue(pipeline: Pipeline, timeout: float) -> str:
    """Poll `dvc queue status` until no task is queued or running and the workers are gone."""
    deadline = time.monotonic() + timeout
    while True:
        status = pipeline.dvc("queue", "status").stdout
        busy = re.search(r"\b(Queued|Running)\b", status)
        if not busy and "Worker status: 0 active, 0 idle" in status:
            return status
        if time.monotonic() > deadline:
            pipeline.dvc("queue", "stop", "--kill", check=False)
            pytest.fail(f"queue still busy after {timeout} s:\n{status}")
        time.sleep(5)


def test_plots_show_writes_html_with_range_test_and_training_plots(pipeline, tmp_path):
    root = pipeline.root
    out = tmp_path / "plots_html"
    pipeline.dvc("plots", "show", "-o", out)
    html = (out / "index.html").read_text()
    specs = {}
    for text in re.findall(r"var spec = (\{.*?\});\s*vegaEmbed", html, flags=re.S):
        spec = json.loads(text)
        specs[spec["title"]["text"]] = spec
    defined = yaml.safe_load((root / "dvc.yaml").read_text())["plots"]
    titles = [next(iter(p.values()))["title"] for p in defined if isinstance(p, dict)]
    assert set(titles) <= set(specs)

    range_test = specs[titles[0]]
    assert range_test["encoding"]["x"] == {
        **range_test["encoding"]["x"], "field": "lr", "scale": {"type": "log"}
    }
    with (root / "plots/range_test/sweep.csv").open() as handle:
        rows = sum(1 for _ in csv.DictReader(handle))
    fields = [d["field"] for d in range_test["data"]["values"]]
    assert sorted(set(fields)) == ["loss", "smoothed_loss"] and len(fields) == 2 * rows

    loss = next(s for t, s in specs.items() if t.startswith("Loss per epoch"))
    files = {(d["filename"], d["field"]) for d in loss["data"]["values"]}
    assert files == {
        (f"train_{v}/history.csv", f) for v in ("baseline", "clr") for f in ("loss", "val_loss")
    }
    image = out / "static" / "workspace_plots_range_test_sweep.png"
    assert image.read_bytes() == (root / "plots/range_test/sweep.png").read_bytes()
    assert 'src="static/workspace_plots_range_test_sweep.png"' in html

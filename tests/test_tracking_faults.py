"""Tracking faults (issue 15): artifacts beside the store whichever process creates the
experiment (a DVC `--temp` copy included), a store created by parallel stages without a race,
an unreachable or dying tracking server failing the stage fast in one line, runs left RUNNING by
killed processes set FAILED, and store errors at stage start as one line.

Most tests run a tiny tracked stage (STAGE below) in its own process, handling ClrpipeError as
the `clrpipe` CLI does (`error: <message>`, exit 1): it opens a stage run, logs a metric per
step, writes `out/result.txt` through `atomic_outputs` and logs it as an artifact.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import config
from clrpipe.pipeline.tracking import abandoned, runs
from tests.conftest import REPO

BIN = Path(sys.executable).parent

STAGE = '''\
"""A tiny tracked stage (tests/test_tracking_faults.py)."""
import os
import sys
import tempfile
import time
from pathlib import Path

from clrpipe.pipeline import config
from clrpipe.pipeline.tracking import runs
from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.outputs import atomic_outputs


def stage(cfg):
    go = os.environ.get("STAGE_GO")
    if go:
        Path(f"{go}.{os.getpid()}").write_text("")  # imports done, waiting
    while go and not Path(go).exists():  # start together with the other processes
        time.sleep(0.01)
    if os.environ.get("STAGE_T0"):
        Path(os.environ["STAGE_T0"]).write_text(repr(time.time()))
    with runs.stage_run(cfg, os.environ.get("STAGE_NAME", "tiny")) as run:
        run.set_tag("test.cwd", os.getcwd())
        run.set_tag("test.dvc_root", os.environ.get("DVC_ROOT", ""))
        with atomic_outputs("out/result.txt") as (tmp,):
            for step in range(int(os.environ.get("STAGE_STEPS", "1"))):
                run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
                if step == 0 and os.environ.get("STAGE_READY"):
                    Path(os.environ["STAGE_READY"]).write_text(run.run_id or "")
                time.sleep(float(os.environ.get("STAGE_SLEEP", "0")))
            tmp.write_text("done\\n")
            with tempfile.TemporaryDirectory() as folder:
                artifact = Path(folder) / "result.txt"
                artifact.write_text("done\\n")
                run.log_artifact(artifact, "out")


try:  # what the `clrpipe` CLI does with a stage's ClrpipeError
    stage(config.load(sys.argv[1:]))
except ClrpipeError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(1)
'''


@pytest.fixture
def tiny(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The `project` scratch folder with the tiny stage script; no MLflow/DVC variables."""
    for name in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    (project / "stage.py").write_text(STAGE)
    return project


def stage_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def start_stage(root: Path, *overrides: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "stage.py", *overrides], cwd=root, env=stage_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def store(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def stage_runs(client: MlflowClient, experiment: str = "clrpipe") -> list:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{runs.STAGE_TAG}` != ''"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tracking_cfg(uri: str, experiment: str = "clrpipe"):
    """The scratch project's params.yaml (the working directory's) with these `tracking:`."""
    return config.load([f"tracking.uri={uri}", f"tracking.experiment={experiment}"])


# --- 1. artifacts land where the project says ----------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/p/.dvc/tmp/exps/tmpab12cd", "/p"),
        ("/p/.dvc/tmp/exps/tmpab12cd/sub/dir", "/p/sub/dir"),
        ("/p/.dvc/tmp/exps", "/p"),
        ("/p/sub", "/p/sub"),
        ("/.dvc/tmp/exps/tmpx/mlflow.db", "/mlflow.db"),
    ],
)
def test_a_path_in_a_dvc_experiment_copy_stands_for_the_real_project(given, expected):
    assert runs.real_path(Path(given)) == Path(expected)


def test_relative_store_in_a_dvc_copy_resolves_to_the_real_project(tmp_path, monkeypatch):
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmp1a2b3c"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for dvc_root in (str(copy), None):  # DVC_ROOT into the copy, or unset with cwd there
        if dvc_root is None:
            monkeypatch.delenv("DVC_ROOT", raising=False)
        else:
            monkeypatch.setenv("DVC_ROOT", dvc_root)
        assert runs.project_root() == tmp_path.resolve()
        assert runs.store_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
        copied = f"sqlite:///{copy / 'mlflow.db'}"
        assert runs.store_uri(copied) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_another_checkout_sharing_the_store_puts_artifacts_beside_it(tiny, tmp_path_factory):
    shared = tmp_path_factory.mktemp("shared_store")
    uri = f"sqlite:///{shared / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "stage.py"], cwd=tiny, env=stage_env(MLFLOW_TRACKING_URI=uri),
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    client = store(shared)
    assert client.get_experiment_by_name("clrpipe").artifact_location == str(
        shared / "mlartifacts" / "clrpipe"
    )
    assert client.get_experiment("0").artifact_location == str(shared / "mlartifacts" / "0")
    (run,) = stage_runs(client)
    assert Path(run.info.artifact_uri, "out", "result.txt").read_text() == "done\n"
    assert not (tiny / "mlruns").exists() and not (tiny / "mlartifacts").exists()


DVC_YAML = """\
stages:
  tiny:
    cmd: python stage.py
    deps:
      - stage.py
    params:
      - tracking
    outs:
      - out/result.txt
"""


@pytest.mark.slow
def test_dvc_temp_and_queued_experiments_write_the_real_projects_store_and_artifacts(tmp_path):
    """`dvc exp run --temp` and a queued experiment run the stage in `.dvc/tmp/exps/<copy>`,
    which DVC deletes; an experiment created from there has its artifacts beside the project's
    store, and they are still there afterwards."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "stage.py").write_text(STAGE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    env = stage_env(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp_path / "dvc_site"),
    )

    def run(*args: str | Path, timeout: float = 600):
        done = subprocess.run(
            [str(a) for a in args], cwd=root, env=env, capture_output=True, text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{args}:\n{(done.stdout + done.stderr)[-4000:]}"
        return done

    run("git", "init", "-q", "-b", "main")
    run("git", "config", "user.name", "clrpipe test")
    run("git", "config", "user.email", "test@clrpipe.invalid")
    run(BIN / "dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "tiny tracked stage")
    assert not (root / "mlflow.db").exists()

    run(BIN / "dvc", "exp", "run", "--temp", "-n", "tmp-exp")

    client = store(root)
    experiment = client.get_experiment_by_name("clrpipe")
    assert experiment.artifact_location == str(root / "mlartifacts" / "clrpipe")
    assert client.get_experiment("0").artifact_location == str(root / "mlartifacts" / "0")
    (stage,) = stage_runs(client)
    assert stage.info.status == "FINISHED"
    assert stage.data.tags["dvc.exp_name"] == "tmp-exp"
    ran_in = Path(stage.data.tags["test.cwd"])
    print(f"\nstage ran in {ran_in}, DVC_ROOT={stage.data.tags['test.dvc_root']}")
    assert "/.dvc/tmp/exps/" in f"{ran_in}/", ran_in
    assert not ran_in.exists()  # DVC deleted its copy...
    artifact = Path(stage.info.artifact_uri) / "out" / "result.txt"
    assert artifact.is_relative_to(root / "mlartifacts" / "clrpipe")
    assert artifact.read_text() == "done\n"  # ...and the artifact is still there
    assert list(root.rglob("mlflow.db")) == [root / "mlflow.db"]
    assert not (root / "mlruns").exists()

    # A queued experiment (run by a DVC queue worker in its own copy) creating a new experiment.
    run(BIN / "dvc", "exp", "run", "--queue", "-n", "queued-exp", "-S", "tracking.experiment=q")
    run(BIN / "dvc", "queue", "start", "-j", "1")
    deadline = time.monotonic() + 600
    while True:
        status = run(BIN / "dvc", "queue", "status").stdout
        if "Worker status: 0 active, 0 idle" in status and "Queued" not in status and (
            "Running" not in status
        ):
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert "queued-exp" in status and "Success" in status, status
    queued = client.get_experiment_by_name("q")
    assert queued.artifact_location == str(root / "mlartifacts" / "q")
    (stage,) = stage_runs(client, "q")
    assert stage.info.status == "FINISHED" and stage.data.tags["dvc.exp_name"] == "queued-exp"
    assert "/.dvc/tmp/exps/" in stage.data.tags["test.cwd"]
    assert not Path(stage.data.tags["test.cwd"]).exists()
    artifact = Path(stage.info.artifact_uri) / "out" / "result.txt"
    assert artifact.is_relative_to(root / "mlartifacts" / "q") and artifact.is_file()
    assert list(root.rglob("mlflow.db")) == [root / "mlflow.db"]


# --- 2. store creation cannot race ---------------------------------------------------------


@pytest.mark.slow
def test_parallel_stages_on_a_fresh_store_all_finish(tiny):
    count = 4
    go = tiny / "go"
    processes = [
        start_stage(tiny, STAGE_GO=str(go), STAGE_NAME=f"parallel_{i}") for i in range(count)
    ]
    deadline = time.monotonic() + 300  # until every process has imported and waits for `go`
    while len(list(tiny.glob("go.*"))) < count:
        assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    go.write_text("")
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
        assert "already exists" not in stderr and "locked" not in stderr, stderr
        assert "Traceback" not in stderr, stderr
    client = store(tiny)
    found = stage_runs(client)
    assert sorted(r.data.tags[runs.STAGE_TAG] for r in found) == [
        f"parallel_{i}" for i in range(count)
    ]
    assert all(r.info.status == "FINISHED" for r in found)
    assert [e.name for e in client.search_experiments()] == ["clrpipe", "Default"]
    parents = {r.data.tags["mlflow.parentRunId"] for r in found}
    assert len(parents) == 1  # one pipeline parent: find-or-create ran under the lock too


# --- 3. tracking server faults -------------------------------------------------------------


def test_no_server_listening_fails_the_stage_at_once_in_one_line(tiny):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    t0 = tiny / "t0"
    started = time.monotonic()
    process = start_stage(tiny, f"tracking.uri={uri}", STAGE_T0=str(t0))
    _, stderr = process.communicate(timeout=120)
    ended, elapsed = time.time(), time.monotonic() - started
    assert process.returncode == 1, stderr
    (line,) = error_lines(stderr)
    assert line.startswith(f"error: tracking server {uri} is not reachable (connection refused)")
    assert (
        f"mlflow server --backend-store-uri sqlite:///{tiny.resolve() / 'mlflow.db'} "
        f"--host 127.0.0.1 --port {port}"
    ) in line
    assert "Traceback" not in stderr
    reported = ended - float(t0.read_text())
    assert reported < 10, reported
    print(f"\nunreachable server reported {reported:.2f} s after stage start ({elapsed:.1f} s "
          "for the whole process)")
    assert not (tiny / "out").exists() and not (tiny / "mlflow.db").exists()


def test_a_server_that_never_answers_is_reported_within_10s(tiny):
    """A socket that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        uri = f"http://127.0.0.1:{port}"
        t0 = tiny / "t0"
        process = start_stage(tiny, f"tracking.uri={uri}", STAGE_T0=str(t0))
        _, stderr = process.communicate(timeout=120)
        reported = time.time() - float(t0.read_text())
    print(f"\nsilent server reported {reported:.2f} s after stage start")
    assert process.returncode == 1, stderr
    (line,) = error_lines(stderr)
    assert line.startswith(f"error: tracking server {uri} is not reachable (no answer within 5 s)")
    assert f"--port {port}`" in line
    assert reported < 10, reported


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "http", "reason", "bound"),
    [("kill", {}, "connection refused after 4 retries", 90),
     ("freeze", {"MLFLOW_HTTP_REQUEST_TIMEOUT": "3", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"},
      "no answer within 3 s after 2 retries", 40)],
    ids=["killed-defaults", "frozen-user-timeouts"],
)
def test_server_lost_mid_run_fails_the_stage_in_bounded_time_and_writes_nothing(
    tiny, killable_mlflow_server, fault, http, reason, bound
):
    """SIGKILL (connections refused) or SIGSTOP (accepted, never answered) of the server while
    the stage logs: the stage ends within `bound` s with one line naming the server. The
    killed server meets clrpipe's HTTP defaults; the frozen one a user's own, shorter ones
    (the defaults' 10 s x 4 retries would take ~80 s)."""
    server = killable_mlflow_server
    ready = tiny / "ready"
    process = start_stage(
        tiny, f"tracking.uri={server.url}",
        STAGE_STEPS="100000", STAGE_SLEEP="0.2", STAGE_READY=str(ready), **http,
    )
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the stage never logged a metric"
            time.sleep(0.1)
        time.sleep(1.0)  # a few more steps logged
        run_id = ready.read_text()
        killed = time.monotonic()
        getattr(server, fault)()
        _, stderr = process.communicate(timeout=300)
        elapsed = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print(f"\nstage failed {elapsed:.1f} s after its tracking server was lost ({fault})")
    assert process.returncode == 1, stderr
    assert elapsed < bound, elapsed
    (line,) = error_lines(stderr)
    assert line.startswith(
        f"error: tracking server {server.url} stopped answering during stage 'tiny' ({reason})"
    ), line
    assert "Traceback" not in stderr, stderr
    assert not (tiny / "out").exists() or not list((tiny / "out").iterdir())

    # Left RUNNING in the server's store, with the process gone: the next stage that reaches
    # that store (here directly through its SQLite file) marks it abandoned.
    server.kill()
    backend = store(server.root)
    assert backend.get_run(run_id).info.status == "RUNNING"
    assert len(backend.get_metric_history(run_id, "loss")) >= 2
    with runs.stage_run(tracking_cfg(f"sqlite:///{server.root / 'mlflow.db'}"), "next"):
        pass
    left = backend.get_run(run_id)
    assert left.info.status == "FAILED"
    assert left.data.tags[runs.ERROR_TAG] == runs.ABANDONED


def test_http_retry_defaults_are_bounded_and_yield_to_the_user(tiny, monkeypatch):
    for name in runs.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    with runs.stage_run(tracking_cfg(f"sqlite:///{tiny / 'mlflow.db'}"), "defaults"):
        pass
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"  # the user's value wins
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] == "1"


# --- 4. no ghost runs ----------------------------------------------------------------------


def test_a_killed_stage_is_marked_abandoned_by_the_next_one(tiny):
    ready = tiny / "ready"
    process = start_stage(tiny, STAGE_STEPS="100000", STAGE_SLEEP="0.1", STAGE_READY=str(ready))
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    run_id = ready.read_text()
    process.send_signal(signal.SIGKILL)
    process.communicate()
    client = store(tiny)
    killed = client.get_run(run_id)
    assert killed.info.status == "RUNNING"
    assert killed.data.tags[runs.HOST_TAG] == socket.gethostname()
    assert killed.data.tags[runs.PID_TAG] == str(process.pid)
    assert killed.data.tags[runs.PROCESS_START_TAG].isdigit()
    assert killed.data.tags[runs.STARTED_TAG].startswith(time.strftime("%Y-", time.gmtime()))

    with runs.stage_run(tracking_cfg(f"sqlite:///{tiny / 'mlflow.db'}"), "next") as run:
        next_id = run.run_id
    killed = client.get_run(run_id)
    assert killed.info.status == "FAILED" and killed.info.end_time is not None
    assert killed.data.tags[runs.ERROR_TAG] == runs.ABANDONED
    assert client.get_run(next_id).info.status == "FINISHED"
    parent = client.get_run(killed.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"  # FAILED by the cleanup, FINISHED by "next"


def test_only_runs_whose_process_is_certainly_gone_are_closed(tiny):
    uri = f"sqlite:///{tiny / 'mlflow.db'}"
    with runs.stage_run(tracking_cfg(uri), "setup") as first:
        experiment = first.client.get_run(first.run_id).info.experiment_id
    client = first.client
    ended = subprocess.Popen(["true"])
    ended.wait()
    me = abandoned.process_tags()
    cases = {
        "alive": (me, "RUNNING"),
        "pid reused": ({**me, runs.PROCESS_START_TAG: "1"}, "FAILED"),
        "ended": (abandoned.process_tags(ended.pid), "FAILED"),
        "other host": ({**me, runs.HOST_TAG: "elsewhere", runs.PID_TAG: str(ended.pid)},
                       "RUNNING"),
        "other pid namespace": (
            {**abandoned.process_tags(ended.pid),
             runs.PID_NAMESPACE_TAG: me[runs.PID_NAMESPACE_TAG].split("/")[0] + "/pid:[1]"},
            "RUNNING",
        ),
        "rebooted since": (
            {**me, runs.PID_NAMESPACE_TAG: "another-boot/pid:[1]"}, "FAILED"
        ),
        "untagged": ({}, "RUNNING"),
    }
    made = {
        name: client.create_run(experiment, tags={runs.STAGE_TAG: name, **tags}).info.run_id
        for name, (tags, _) in cases.items()
    }
    with runs.stage_run(tracking_cfg(uri), "cleanup"):
        pass
    statuses = {name: client.get_run(run_id).info.status for name, run_id in made.items()}
    assert statuses == {name: status for name, (_, status) in cases.items()}


# --- store errors at stage start -----------------------------------------------------------


def test_a_store_in_a_missing_folder_is_one_line(tiny):
    uri = f"sqlite:///{tiny / 'missing' / 'folder' / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "stage.py", f"tracking.uri={uri}"], cwd=tiny, env=stage_env(),
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        f"error: tracking store {uri}: folder {tiny / 'missing' / 'folder'} does not exist"
    ]
    assert "Traceback" not in done.stderr


FULL = '''\
"""Open a stage run on a store whose files cannot grow (RLIMIT_FSIZE): a full disk."""
import resource
import signal
import sys

from clrpipe.pipeline import config
from clrpipe.pipeline.tracking import runs
from clrpipe.errors import ClrpipeError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of killing us


def stage(cfg):
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))
    with runs.stage_run(cfg, "full"):
        pass


try:
    stage(config.load(sys.argv[1:]))
except ClrpipeError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(1)
'''


def test_a_store_that_cannot_be_written_is_one_line_not_an_attribute_error(tiny):
    uri = f"sqlite:///{tiny / 'mlflow.db'}"
    with runs.stage_run(tracking_cfg(uri, "existing"), "setup"):
        pass  # the store exists; creating a new experiment must write to it
    (tiny / "full.py").write_text(FULL)
    done = subprocess.run(
        [sys.executable, "full.py", f"tracking.uri={uri}", "tracking.experiment=new"],
        cwd=tiny, env=stage_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert error_lines(done.stderr) == [
        f"error: tracking store {uri}: cannot create experiment 'new': disk I/O error"
    ]
    assert "AttributeError" not in done.stderr and "Traceback" not in done.stderr


def test_store_error_at_start_raises_clrpipe_error_naming_the_store(tiny, monkeypatch):
    uri = f"sqlite:///{tiny / 'mlflow.db'}"

    def full(self, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        raise MlflowException(
            "(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT INTO runs ...]"
        )

    monkeypatch.setattr(MlflowClient, "create_run", full)
    with pytest.raises(ClrpipeError) as err, runs.stage_run(tracking_cfg(uri), "full"):
        pytest.fail("the run opened")
    assert str(err.value) == f"tracking store {uri}: database or disk is full"


# --- log_batch chunks metric lists itself ----------------------------------------------------


def test_log_series_longer_than_one_batch_is_stored_whole(tiny):
    with runs.stage_run(tracking_cfg(f"sqlite:///{tiny / 'mlflow.db'}"), "long") as run:
        run.log_series("lr", list(range(2500)), [i / 2500 for i in range(2500)])
        run.log_metrics({"loss": 0.5}, step=0, buffered=True)
    history = run.client.get_metric_history(run.run_id, "lr")
    assert sorted(m.step for m in history) == list(range(2500))
    assert [m.step for m in run.client.get_metric_history(run.run_id, "loss")] == [0]
    assert not hasattr(runs, "log_metric_batches")

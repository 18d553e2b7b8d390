"""The `clrpipe` command: one subcommand per pipeline stage, each taking `key=value` overrides."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

import click

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import config

__all__ = ["main"]

OVERRIDES = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Find good learning rates, then train with them: the stages of the clrpipe pipeline."""


@main.command()
@OVERRIDES
def fetch(overrides: tuple[str, ...]) -> None:
    """Make sure the raw table is at data.raw, downloading it with kagglehub if it is not."""
    _run("fetch", overrides)


@main.command()
@OVERRIDES
def prepare(overrides: tuple[str, ...]) -> None:
    """Load, validate and repair the raw table; write features and a repair report."""
    _run("prepare", overrides)


@main.command()
@OVERRIDES
def split(overrides: tuple[str, ...]) -> None:
    """Stratified train/test split and a scaler fitted on the training part only."""
    _run("split", overrides)


@main.command(name="range-test")
@OVERRIDES
def range_test(overrides: tuple[str, ...]) -> None:
    """LR range test: sweep the LR, pick CLR bounds -> metrics/range_test.json."""
    _run("range_test", overrides)


@main.command()
@click.argument("variant", type=click.Choice(["baseline", "clr"]))
@OVERRIDES
def train(variant: str, overrides: tuple[str, ...]) -> None:
    """Train the network: `baseline` (constant LR) or `clr` (the `schedule:` section)."""
    _run("train", overrides, variant)


@main.command()
@OVERRIDES
def compare(overrides: tuple[str, ...]) -> None:
    """Every `compare:` method x seed and gradient boosting, on Ray -> metrics/compare.json."""
    _run("compare", overrides)


@main.command()
@OVERRIDES
def champion(overrides: tuple[str, ...]) -> None:
    """Point the registry alias `champion` at the better trained model (validation score)."""
    _run("champion", overrides)


@main.command()
@OVERRIDES
def study(overrides: tuple[str, ...]) -> None:
    """The study: datasets x methods x seeds against a tuned oracle -> reports/study.md."""
    _run("study", overrides)


@main.command()
@click.option("--version", "version", metavar="N", help="The registered version to serve.")
@click.option("--run", "run_id", metavar="RUN_ID", help="The version this training run registered.")
@click.option("--name", metavar="NAME", help="Registered model (default: registry.name).")
@OVERRIDES
def promote(version: str | None, run_id: str | None, name: str | None,
            overrides: tuple[str, ...]) -> None:
    """Move the alias `champion` to another version of the registered model, by hand."""
    from clrpipe.pipeline.tracking import registry
    _guarded(lambda: registry.promote_command(overrides, version, run_id, name))


@main.command()
@click.option("--model", "model_uri", required=True, metavar="URI",
              help="The serving model, e.g. models:/clrpipe-cardio@champion.")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(path_type=Path))
@OVERRIDES
def predict(model_uri: str, input_path: Path, output_path: Path,
            overrides: tuple[str, ...]) -> None:
    """Score the raw rows of INPUT (CSV/TSV/Parquet) -> OUTPUT (.csv or .parquet)."""
    from clrpipe.pipeline.tracking import serving
    _guarded(lambda: serving.predict_file(overrides, model_uri, input_path, output_path))


@main.command()
@click.option("--backend-store-uri", required=True, metavar="URI",
              help="The runs' database, e.g. postgresql://user:pw@127.0.0.1:5432/mlflow.")
@click.option("--artifacts-destination", required=True, metavar="URI",
              help="Where the server stores the artifacts it proxies (a folder, s3://...).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--auth", is_flag=True,
              help="MLflow's basic-auth app (admin password: $MLFLOW_AUTH_ADMIN_PASSWORD).")
@click.option("--auth-db", metavar="URI", help="The auth app's user store "
              "(default: sqlite:///mlflow_auth.db in the working directory).")
def server(backend_store_uri: str, artifacts_destination: str, host: str, port: int,
           workers: int, auth: bool, auth_db: str | None) -> None:
    """A team's MLflow tracking server: a database store, proxied artifacts, optional auth."""
    from clrpipe.pipeline.tracking.server import server_command
    try:
        argv, env = server_command(backend_store_uri, artifacts_destination, host, port,
                                   workers, auth, auth_db)
    except ClrpipeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    os.execve(argv[0], argv, env)


def _guarded(call) -> None:
    """Run a command's body: a ClrpipeError is its one line on stderr and exit code 1."""
    try:
        with _sigterm_interrupts(), _quiet_tensorflow_start():
            call()
    except ClrpipeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


def stage_module(stage: str) -> str:
    """The module of a stage's entry point: the pipeline's stages, and the study's own."""
    return "clrpipe.study.stage" if stage == "study" else f"clrpipe.pipeline.stages.{stage}"


def _run(stage: str, overrides: tuple[str, ...], *args: str) -> None:
    """Load and validate the whole config (before TensorFlow or MLflow is imported, so a
    config error is one fast line), then run `stage_module(stage).run(cfg, *args)`."""
    try:
        cfg = config.load(overrides)
        config.validated(cfg)
        with _sigterm_interrupts():
            with _quiet_tensorflow_start():
                module = importlib.import_module(stage_module(stage))
            module.run(cfg, *args)
    except ClrpipeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt as err:
        signum = signal.SIGTERM if isinstance(err, _Terminated) else signal.SIGINT
        click.echo(f"error: interrupted by {signum.name}; no outputs written", err=True)
        sys.exit(128 + signum)


_TF_START_NOISE = re.compile(
    r"absl::InitializeLog|oneDNN custom operations|cudart_stub|cuda_platform|cuInit|"
    r"cpu_feature_guard|To enable the following instructions|Could not find cuda drivers"
)


@contextlib.contextmanager
def _quiet_tensorflow_start():
    """Import TensorFlow without its start-up banner: TF_CPP_MIN_LOG_LEVEL=3 unless set (errors
    are still raised as Python exceptions) and, while the stage module is imported, the lines
    TensorFlow writes to stderr before its logging is initialised are dropped: TensorFlow 2.21
    prints them whatever TF_CPP_MIN_LOG_LEVEL says. Anything else written meanwhile is passed
    on. TF_CPP_MIN_LOG_LEVEL=0 turns this off and shows all of TensorFlow's log lines."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0" or "tensorflow" in sys.modules:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _TF_START_NOISE.search(line):
                    sys.stderr.write(line)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt: the stage's run ends KILLED."""


def _raise_terminated(signum, frame):
    raise _Terminated


@contextlib.contextmanager
def _sigterm_interrupts():
    """While a stage runs, SIGTERM (what CI runners, `mlflow run` cancellation and Kubernetes
    send) unwinds like Ctrl-C instead of killing the process with its MLflow run left RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@main.command()
@OVERRIDES
def params(overrides: tuple[str, ...]) -> None:
    """Write params.yaml composed from conf/ (what `dvc exp run` does; `dvc repro` does not)."""
    from omegaconf import OmegaConf

    from clrpipe.pipeline.data import sources
    from clrpipe.pipeline.outputs import atomic_outputs

    try:
        composed = config.compose(overrides)
        data, note = sources.split_outside(OmegaConf.to_container(composed.data))
    except ClrpipeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    if note:
        composed.data = data
        click.echo(f"params: {note}")
    with atomic_outputs(config.PARAMS_FILE) as (tmp,):
        OmegaConf.save(composed, tmp)
    click.echo(f"params: wrote {config.PARAMS_FILE} from {config.CONF_DIR}/config.yaml")


@main.command()
@click.option("--reference", type=click.Path(path_type=Path), metavar="FILE",
              help="Reference values and tolerances (e.g. ci/reference.json).")
@click.option("--metrics-dir", type=click.Path(path_type=Path), default=Path("metrics"),
              show_default=True, help="Folder of the run's metrics JSON files.")
@click.option("--bench", type=click.Path(path_type=Path), metavar="FILE",
              help="bench/benchmark.py --json output of the same run (bench.* checks).")
@click.option("--against", metavar="REV",
              help="Compare the workspace with a git revision via `dvc metrics diff`.")
@click.option("--promote", is_flag=True,
              help="On a pass, move the registry alias `champion` to the version in "
                   "<metrics-dir>/champion.json.")
def gate(reference: Path | None, metrics_dir: Path, bench: Path | None, against: str | None,
         promote: bool):
    """Check metrics against references (or a git revision); exit 1 with a table on regression."""
    from clrpipe.pipeline.comparison import gate as core
    try:
        report, passed = core.run(reference, metrics_dir, bench, against)
    except ClrpipeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    click.echo(report)
    if not passed:
        sys.exit(1)
    if promote:
        from clrpipe.pipeline.tracking import registry
        _guarded(lambda: registry.promote_recorded(metrics_dir / "champion.json"))

"""What a user sees: a config error is one fast line before TensorFlow or MLflow is imported,
and a successful stage prints its summary line and nothing else (no TensorFlow banner, no
MLflow hints); its outputs follow the umask."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXE = Path(sys.executable).with_name("clrpipe")
NOISE = ("absl::InitializeLog", "oneDNN", "cuInit", "cuda", "Inferred schema",
         "pip version", "Traceback", "Warning")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TF_CPP", "MLFLOW_", "DVC_"))}
    return env


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "clr", "range_test.min_lr=abc"],
         "error: params.yaml: range_test.min_lr: expected a number, got 'abc'"),
        (["split", "compare.seeds=0"],
         "error: params.yaml: compare.seeds: input should be greater than 0, got 0"),
        (["prepare", "schedule.policy=triangle"],
         "error: params.yaml: schedule.policy: expected one of constant, triangular, "
         "triangular2, exp_range, one_cycle, got 'triangle'"),
    ],
)
def test_a_config_error_in_any_section_is_one_line_before_tensorflow(project, args, message):
    """The whole params.yaml is validated whichever stage runs (a bad value in a section the
    stage does not read is refused too), before TensorFlow, MLflow or Ray is imported."""
    probe = (
        "import sys\nfrom clrpipe.pipeline.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as done:\n    code = done.code\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'mlflow', 'ray') if m in sys.modules]\n"
        "print(code, heavy)\n"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                          env=_env(), timeout=120)
    seconds = time.perf_counter() - started
    assert done.stderr.splitlines() == [message]
    assert done.stdout.strip() == "1 []"
    assert seconds < 30  # a loose bound against a hang; the benchmark measures the real time


def test_a_yaml_syntax_error_is_one_line(project):
    (project / "params.yaml").write_text("train:\n  seed: [1, 2\n")
    done = subprocess.run([str(EXE), "split"], capture_output=True, text=True, env=_env(),
                          timeout=120)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: params.yaml: not valid YAML (")


@pytest.mark.slow
def test_a_tracked_stage_prints_only_its_summary_and_outputs_follow_the_umask(trained_project):
    done = subprocess.run(
        [str(EXE), "train", "baseline", "train.baseline.epochs=1"],
        capture_output=True, text=True, env=_env(), timeout=600,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", [line for line in done.stderr.splitlines()
                               if any(n in line for n in NOISE)] or done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith("train_baseline: test accuracy ")
    for path in ("models/train_baseline.keras", "metrics/train_baseline.json",
                 "plots/train_baseline/history.csv"):
        assert (trained_project / path).stat().st_mode & 0o777 == 0o644, path

"""CI's small real pipeline, then the regression gate.

    python3 -m uv run --frozen python ci/pipeline.py

In a scratch copy of the working tree (tracked and untracked-but-not-ignored files; its own git
repository, DVC cache and MLflow store, all deleted afterwards unless $CLRPIPE_CI_KEEP is set):

1. `clrpipe params` with reduced epochs (EPOCHS below) rewrites the copy's params.yaml;
2. `dvc repro --force train_baseline train_clr` runs every stage up to them (fetch, prepare,
   split, range_test, both trainings; forced, as the copied dvc.lock may match) on the real table
   ($CLRPIPE_CARDIO_CSV, default ../shared/data/cardio_train.csv; the fetch stage copies it),
   tracked to the copy's own `mlflow.db`;
3. every tracked stage must have exactly one FINISHED run under one pipeline parent run;
4. `bench/benchmark.py --quick` times the epoch ratio (and the range-test stage) on the copy;
5. `clrpipe gate --reference ci/reference.json --bench <that JSON>`: exit 1 with the table of
   what regressed. The table is also appended to $GITHUB_STEP_SUMMARY when that is set.

`--update-reference` instead rewrites the `reference` values of ci/reference.json with this
run's metrics (tolerances, factors and bounds kept): after an intended change of results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from worktree import copy_worktree, tool_env  # noqa: E402

EPOCHS = ("train.baseline.epochs=10", "train.clr.epochs=20")
TARGETS = ("train_baseline", "train_clr")
TRACKED = ("range_test", "train_baseline", "train_clr")
REFERENCE = REPO / "ci" / "reference.json"


def step(title: str, command: list[str], cwd: Path, env: dict) -> None:
    """Run one step with its output streaming to the log; stop the pipeline if it fails."""
    print(f"::group::{title}" if os.environ.get("GITHUB_ACTIONS") else f"== {title}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env)
    seconds = time.perf_counter() - started
    print(f"-- {title}: exit {done.returncode} in {seconds:.1f} s", flush=True)
    if os.environ.get("GITHUB_ACTIONS"):
        print("::endgroup::", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"ci: step '{title}' failed (exit {done.returncode})")


def check_tracking(store: Path) -> None:
    """Each tracked stage left one FINISHED child run, all under the same parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("clrpipe")
    if experiment is None:
        raise SystemExit(f"ci: {store}: no 'clrpipe' experiment; the stages tracked nothing")
    runs = client.search_runs([experiment.experiment_id])
    parents = set()
    for stage in TRACKED:
        found = [r for r in runs if r.data.tags.get("clrpipe.stage") == stage]
        states = [r.info.status for r in found]
        if states != ["FINISHED"]:
            raise SystemExit(f"ci: {store}: stage {stage}: expected one FINISHED run, got {states}")
        parents.add(found[0].data.tags.get("mlflow.parentRunId"))
        print(f"tracked: {stage} run {found[0].info.run_id} FINISHED", flush=True)
    if len(parents) != 1 or None in parents:
        raise SystemExit(f"ci: {store}: expected one parent run for all stages, got {parents}")


def update_reference(metrics_dir: Path) -> None:
    """Set every check's `reference` to this run's value (4 significant digits)."""
    from clrpipe.pipeline.comparison import gate
    current = gate.load_metrics_dir(metrics_dir)
    raw = json.loads(REFERENCE.read_text())
    for check in raw["checks"]:
        if "reference" in check:
            check["reference"] = float(f"{current[check['metric']]:.4g}")
    REFERENCE.write_text(reference_text(raw))
    print(f"ci: updated the reference values in {REFERENCE}", flush=True)


def reference_text(raw: dict) -> str:
    """The reference file as JSON with one line per check (its note on a second line)."""
    checks = []
    for check in raw["checks"]:
        fields = {k: v for k, v in check.items() if k != "note"}
        text = "    " + json.dumps(fields, ensure_ascii=False)
        if "note" in check:
            text = text[:-1] + f',\n     "note": {json.dumps(check["note"], ensure_ascii=False)}}}'
        checks.append(text)
    about = json.dumps(raw.get("about", ""), ensure_ascii=False)
    return "{\n" + f'  "about": {about},\n  "checks": [\n' + ",\n".join(checks) + "\n  ]\n}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--update-reference", action="store_true",
                        help="write this run's metrics into ci/reference.json instead of gating")
    args = parser.parse_args()
    default_csv = REPO.parent / "shared" / "data" / "cardio_train.csv"
    csv = Path(os.environ.get("CLRPIPE_CARDIO_CSV") or default_csv).resolve()
    if not csv.is_file():
        raise SystemExit(f"ci: {csv}: the real cardio table is needed; set CLRPIPE_CARDIO_CSV")
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="clrpipe-ci-"))
    try:
        work = copy_worktree(REPO, scratch / "project")
        env = tool_env(csv)
        bench_json = scratch / "bench.json"
        step("params (reduced epochs)", ["clrpipe", "params", *EPOCHS], work, env)
        step("dvc repro --force", ["dvc", "repro", "--force", *TARGETS], work, env)
        check_tracking(work / "mlflow.db")
        if args.update_reference:
            update_reference(work / "metrics")
            return 0
        step(
            "benchmark --quick",
            [sys.executable, str(REPO / "bench" / "benchmark.py"), "--quick",
             "--project", str(work), "--json", str(bench_json)],
            work,
            env,
        )
        gate = subprocess.run(
            ["clrpipe", "gate", "--reference", str(REFERENCE), "--metrics-dir", "metrics",
             "--bench", str(bench_json)],
            cwd=work, env=env, capture_output=True, text=True,
        )
        print(gate.stdout, gate.stderr, sep="", end="", flush=True)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            with open(summary, "a") as out:
                out.write(gate.stdout + gate.stderr + "\n")
        print(f"ci: small pipeline and gate in {time.perf_counter() - started:.0f} s "
              f"(gate exit {gate.returncode})", flush=True)
        return gate.returncode
    finally:
        if os.environ.get("CLRPIPE_CI_KEEP"):
            print(f"ci: kept {scratch}", flush=True)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

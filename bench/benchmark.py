"""Benchmark clrpipe against the article's plain Keras flow, on one machine in one run.

    uv run --frozen python bench/benchmark.py [--project DIR] [--repeats N] [--quick]
                                              [--json OUT.json] [--tf-threads N]

Measures, with the minimum and median over `--repeats`:

- epoch: one baseline epoch of the article's network (the project's layer sizes and activation,
  no dropout or L2; batch 32, SGD 0.01, the fit part of the real split) through clrpipe's fast
  path (`loop.compile_model` + `loop.fit` with the project's
  `train.steps_per_execution` / `train.jit_compile`) against the article's plain
  `model.compile(...); model.fit(x, y, batch_size=32, epochs=1)`, as a paired ratio per repeat,
  and whether the final weights are bit-identical for the same seed; plus variants
  (steps_per_execution 64 / 256 / a whole epoch, XLA on or off, and the same with TensorFlow
  limited to one thread, in a child process) with their max abs weight difference from plain
  fit; and, when the project's model has dropout or L2, clrpipe's setting against plain fit
  for that model too;
- tracking: the `train` stage (`stages.train.run`) with tracking on (an SQLite store in
  a temporary directory) against off;
- range_test: the `range_test` stage with the project's default settings;
- pipeline (not with --quick): `dvc repro --force train_baseline train_clr` in a temporary copy
  of the project against `bench/article_script.py` (the article's flow in one file);
- serving (not with --quick; `--serving-only` for it alone): one served 1-row request to the
  registered pyfunc against a Keras model with the preprocessing as layers, and `clrpipe
  predict` on the raw table (`bench/serving_bench.py`).

`--study` measures the study instead (and needs no split): the packed training of 5 seeds
(`clrpipe.study.packed`) against the same 5 seeds as separate trials (each `loop.fit` with
per-epoch validation, as `compare` trains them), on cardio and breast cancer with the study's
epochs and batch sizes; and the whole study (`clrpipe study` as a new process in a temporary
folder, `--csv` as cardio's raw table), its wall seconds.

Nothing in the project directory is modified: stages run in temporary copies. `--quick` (for CI)
measures only the epoch ratio (clrpipe's setting) and the range-test stage.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from clrpipe.pipeline import config
from clrpipe.pipeline.params import ModelParams, SplitParams, TrainParams
from clrpipe.pipeline.training import loop
from clrpipe.pipeline.training.model import build_model
from clrpipe.pipeline.training.trial import load_split, split_arrays

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_bench import markdown as serving_markdown
from serving_bench import measure_serving
from worktree import RUN_ENV, copy_worktree, tool_env

HERE = Path(__file__).resolve().parent
DEFAULT_PROJECT = HERE.parent
DEFAULT_CSV = Path(
    os.environ.get("CLRPIPE_CARDIO_CSV", DEFAULT_PROJECT.parent / "shared/data/cardio_train.csv")
)
BATCH = 32
LEARNING_RATE = 0.01
PIPELINE_TARGETS = ("train_baseline", "train_clr")


def stats(values: list[float]) -> dict:
    """Minimum, median and every value of a list of measurements."""
    return {"min": min(values), "median": statistics.median(values), "values": values}


# ---------------------------------------------------------------------------- epoch timing


class EpochTimer(keras.callbacks.Callback):
    """Seconds of every epoch; epoch hooks only, so batch-level callback work is not added."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def fit_arrays(project: Path) -> tuple[np.ndarray, np.ndarray, ModelParams, TrainParams]:
    """The rows the baseline stage fits on (training split minus its validation slice)."""
    cfg = config.load(params_file=project / "params.yaml", conf_dir=project / "conf")
    params = config.section(cfg, "train", TrainParams)
    split_dir = project / config.section(cfg, "split", SplitParams).dir
    split = split_arrays(*load_split(split_dir), params.validation_fraction, params.seed)
    return split.x, split.y, config.section(cfg, "model", ModelParams), params


def article_network(model_params: ModelParams) -> ModelParams:
    """The project's layer sizes and activation without regularization: the article's network."""
    return model_params.model_copy(update={"dropout": 0.0, "l2": 0.0})


def time_epochs(
    x: np.ndarray,
    y: np.ndarray,
    model_params: ModelParams,
    seed: int,
    *,
    plain: bool,
    steps_per_execution: int = 1,
    jit_compile: bool = False,
    epochs: int = 2,
) -> tuple[list[float], list[np.ndarray]]:
    """Train a fresh model `epochs` epochs; return each epoch's seconds and the final weights.

    `plain` is the article's code: `model.compile(optimizer, loss, metrics)` with Keras'
    defaults (steps_per_execution 1, jit_compile "auto" = off on CPU) and `model.fit(x, y,
    batch_size=32, epochs=...)` (verbose=0: no progress bar, which only favours plain fit).
    Otherwise clrpipe's path: `training.compile_model` + `training.fit` (with its recorder
    callback that reads the LR after every compiled call). The first epoch includes tracing.
    """
    model = build_model(model_params, x.shape[1], seed)
    optimizer = keras.optimizers.SGD(learning_rate=LEARNING_RATE)
    if plain:
        model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["accuracy"])
        timer = EpochTimer()
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[timer])
        seconds = timer.seconds
    else:
        loop.compile_model(model, optimizer, steps_per_execution, jit_compile)
        seconds = loop.fit(model, x, y, epochs=epochs, batch_size=BATCH).epoch_seconds
    return seconds, [w.copy() for w in model.get_weights()]


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b, strict=True))


def epoch_variants(steps_per_epoch: int, params: TrainParams, quick: bool) -> dict[str, dict]:
    """Fast-path settings to time against plain fit; the first is the project's own."""
    own = f"clrpipe (spe {params.steps_per_execution}, jit {'on' if params.jit_compile else 'off'})"
    variants = {
        own: {"steps_per_execution": params.steps_per_execution, "jit_compile": params.jit_compile}
    }
    if not quick:
        for spe in (64, 256, steps_per_epoch):
            for jit in (False, True):
                name = f"spe {spe}{' (whole epoch)' if spe == steps_per_epoch else ''}, " \
                       f"jit {'on' if jit else 'off'}"
                setting = {"steps_per_execution": spe, "jit_compile": jit}
                if setting not in variants.values():
                    variants[name] = setting
    return variants


def measure_epoch(
    project: Path, repeats: int, quick: bool = False, log=print, project_model: bool = False
) -> dict:
    """Paired per-repeat timings of plain fit and each fast-path variant (see `time_epochs`).

    Each repeat trains every variant for two epochs from the same seed: the second epoch is the
    steady-state epoch timed and compared (the first, with tracing, is reported as well).
    The ratio is fast / plain of the same repeat; `ratio_of_min` (fastest variant epoch over
    fastest plain epoch) is the estimate least disturbed by other load on the machine. Weights
    are compared after both epochs.
    """
    x, y, model_params, params = fit_arrays(project)
    if not project_model:
        model_params = article_network(model_params)
    steps = math.ceil(len(x) / BATCH)
    variants = epoch_variants(steps, params, quick)
    runs: dict[str, dict[str, list]] = {
        name: {"first": [], "steady": [], "ratio": [], "diff": []} for name in ("plain", *variants)
    }
    for repeat in range(repeats):
        seconds, plain_weights = time_epochs(x, y, model_params, params.seed, plain=True)
        runs["plain"]["first"].append(seconds[0])
        runs["plain"]["steady"].append(seconds[1])
        for name, setting in variants.items():
            seconds, weights = time_epochs(x, y, model_params, params.seed, plain=False, **setting)
            run = runs[name]
            run["first"].append(seconds[0])
            run["steady"].append(seconds[1])
            run["ratio"].append(seconds[1] / runs["plain"]["steady"][-1])
            run["diff"].append(max_abs_diff(weights, plain_weights))
        log(f"  epoch repeat {repeat + 1}/{repeats}: plain {runs['plain']['steady'][-1]:.3f} s")
    result = {"rows": len(x), "batch_size": BATCH, "steps_per_epoch": steps, "variants": {},
              "model": model_params.model_dump()}
    for name, run in runs.items():
        entry = {"first_epoch_s": stats(run["first"]), "epoch_s": stats(run["steady"])}
        if name != "plain":
            entry.update(
                ratio=stats(run["ratio"]),
                ratio_of_min=min(run["steady"]) / min(runs["plain"]["steady"]),
                max_abs_weight_diff=max(run["diff"]),
                identical=all(d == 0.0 for d in run["diff"]),
                **variants[name],
            )
        result["variants"][name] = entry
    own = result["variants"][next(iter(variants))]
    result.update(
        setting=next(iter(variants)),
        ratio_min=own["ratio"]["min"],
        ratio_median=own["ratio"]["median"],
        ratio_of_min=own["ratio_of_min"],
        identical=own["identical"],
    )
    return result


def measure_epoch_one_thread(project: Path, repeats: int, plain_min: float) -> dict[str, dict]:
    """The epoch variants with TensorFlow limited to one thread, in a child process (TF fixes
    its thread pools at start-up); `ratio_of_min` is against this process's (default-threaded)
    plain fit, `identical` against the child's own plain fit."""
    with tempfile.TemporaryDirectory(prefix="clrpipe-epoch-") as folder:
        out = Path(folder) / "epoch.json"
        run_command([sys.executable, __file__, "--epoch-only", "--tf-threads", "1", "--project",
                     str(project), "--repeats", str(repeats), "--json", str(out)], project)
        child = json.loads(out.read_text())["epoch"]["variants"]
    variants = {}
    for name, entry in child.items():
        entry["ratio_of_min"] = entry["epoch_s"]["min"] / plain_min
        entry.pop("ratio", None)
        variants[f"{name}, 1 TF thread"] = entry
    return variants


# ----------------------------------------------------------------- stages in a scratch project


@contextlib.contextmanager
def scratch_project(project: Path, workdir: Path, with_range_test: bool = False) -> Iterator[Path]:
    """A new folder under `workdir` with the project's conf, params.yaml, uv project files (from
    which MLflow's `log_model` exports the requirements) and real split, as the working directory.

    It is left in place (the caller deletes `workdir` when done): SQLite identifies open
    databases by inode within a process, so deleting a store MLflow still holds a pooled
    connection to and creating the next one on a reused inode makes it "readonly".
    """
    root = Path(tempfile.mkdtemp(prefix="project-", dir=workdir))
    shutil.copytree(project / "conf", root / "conf")
    for name in ("params.yaml", "pyproject.toml", "uv.lock"):  # MLflow reads the uv project
        shutil.copy(project / name, root / name)
    shutil.copytree(project / "data" / "split", root / "data" / "split")
    if with_range_test:
        (root / "metrics").mkdir()
        shutil.copy(project / "metrics" / "range_test.json", root / "metrics")
    saved = {k: os.environ.pop(k, None) for k in RUN_ENV}
    try:
        with contextlib.chdir(root):
            yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def quietly(function: Callable[[], object]) -> tuple[float, object]:
    """Seconds taken by `function()` and its result; its stdout (stage summary lines) swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        result = function()
        return time.perf_counter() - started, result


def measure_tracking(
    project: Path, workdir: Path, repeats: int, epochs: int, variant: str = "baseline"
) -> dict:
    """The `train` stage with tracking on (SQLite store in the scratch dir) vs off.

    Measured span: the whole `stages.train.run` call (load split, build, compile, fit
    with per-epoch validation, test evaluation, writing model/metrics/CSVs; with tracking also
    the child run, params, per-epoch metrics, LR series, model, datasets and PNG curves).
    Outside it: process start and imports; one untimed run of each first (imports of mlflow's
    Keras flavour and matplotlib, creating the SQLite schema), as a real store already exists.
    Runs alternate on/off so drift affects both alike.
    """
    from clrpipe.pipeline.stages import train as stage

    overrides = [f"train.{variant}.epochs={epochs}"]
    with scratch_project(project, workdir, with_range_test=True):
        def run(enabled: bool) -> float:
            cfg = config.load([*overrides, f"tracking.enabled={str(enabled).lower()}"])
            return quietly(lambda: stage.run(cfg, variant))[0]

        run(True)
        run(False)
        on, off = [], []
        for _ in range(repeats):
            on.append(run(True))
            off.append(run(False))
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    return {
        "variant": variant,
        "epochs": epochs,
        "on_s": stats(on),
        "off_s": stats(off),
        "ratio": stats(ratios),
        "overhead_s": statistics.median(on) - statistics.median(off),
    }


def measure_range_test(project: Path, workdir: Path, repeats: int) -> dict:
    """The `range_test` stage (`stages.range_test.run`) with the project's defaults,
    tracking included, after one untimed run (imports, creating the SQLite store); the sweep's
    own seconds (as the stage reports them) alongside. `range_test_process` adds a cold run."""
    from clrpipe.pipeline.stages import range_test as stage

    stage_s, sweep_s = [], []
    with scratch_project(project, workdir):
        quietly(lambda: stage.run(config.load()))
        for _ in range(repeats):
            seconds, summary = quietly(lambda: stage.run(config.load()))
            stage_s.append(seconds)
            sweep_s.append(summary["seconds"])
    return {"stage_s": stats(stage_s), "sweep_s": stats(sweep_s)}


def range_test_process(project: Path, workdir: Path) -> float:
    """Wall seconds of `clrpipe range-test` as a fresh process (imports included)."""
    with scratch_project(project, workdir) as root:
        return run_command([clrpipe_exe(), "range-test"], root)


# ------------------------------------------------------------ dvc repro vs the article script


def clrpipe_exe() -> str:
    return str(Path(sys.executable).with_name("clrpipe"))


def run_command(command: list[str], cwd: Path, env: dict | None = None) -> float:
    """Wall seconds of a command; its output is kept only to explain a failure."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(command)} failed in {cwd}:\n" + "\n".join(tail))
    return seconds


def measure_pipeline(project: Path, csv: Path, repeats: int, log=print) -> dict:
    """`dvc repro --force` of the training stages (and everything upstream: fetch, prepare,
    split, range_test) in a fresh copy, against `article_script.py`, alternately."""
    env = tool_env(csv)
    repro, script = [], []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory(prefix="clrpipe-repro-") as folder:
            copy = copy_worktree(project, Path(folder))
            command = ["dvc", "repro", "--force", *PIPELINE_TARGETS]
            repro.append(run_command(command, copy, env))
        with tempfile.TemporaryDirectory(prefix="clrpipe-article-") as folder:
            command = [sys.executable, str(HERE / "article_script.py"), str(csv)]
            script.append(run_command(command, Path(folder), env))
        log(f"  pipeline repeat {repeat + 1}/{repeats}: dvc repro {repro[-1]:.1f} s, "
            f"article script {script[-1]:.1f} s")
    ratios = [a / b for a, b in zip(repro, script, strict=True)]
    return {
        "targets": list(PIPELINE_TARGETS),
        "dvc_repro_s": stats(repro),
        "article_script_s": stats(script),
        "ratio": stats(ratios),
    }


# ------------------------------------------------------------------------------- reporting


def machine() -> dict:
    import tensorflow as tf

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def markdown(results: dict) -> str:
    """The results as markdown tables (the README's benchmark section)."""
    lines = []
    epoch = results.get("epoch")
    if epoch:
        lines += [
            f"One baseline epoch ({epoch['rows']} rows, batch {epoch['batch_size']}, "
            f"{epoch['steps_per_epoch']} steps), steady state; ratio = variant / plain fit, "
            "paired per repeat:",
            "",
            "| variant | epoch s (min / median) | 1st epoch s (median) | ratio (paired min / "
            "median) | ratio of mins | weights vs plain fit |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in epoch["variants"].items():
            ratio = entry.get("ratio")
            ratio_text = f"{ratio['min']:.3f} / {ratio['median']:.3f}" if ratio else "—"
            ratio_text = "1" if name == "plain" else ratio_text
            of_min = f"{entry['ratio_of_min']:.3f}" if "ratio_of_min" in entry else "1"
            if name == "plain":
                weights = "(reference)"
            elif "identical" not in entry:
                weights = "—"
            elif entry["identical"]:
                weights = "identical"
            else:
                weights = f"max abs diff {entry['max_abs_weight_diff']:.2e}"
            lines.append(
                f"| {name} | {entry['epoch_s']['min']:.3f} / {entry['epoch_s']['median']:.3f} "
                f"| {entry['first_epoch_s']['median']:.3f} | {ratio_text} | {of_min} | {weights} |"
            )
        lines.append("")
    own_model = results.get("epoch_project_model")
    if own_model:
        plain, fast = (own_model["variants"][name]["epoch_s"]["min"]
                       for name in ("plain", own_model["setting"]))
        lines += [
            f"The project's model (dropout {own_model['model']['dropout']}, L2 "
            f"{own_model['model']['l2']}): plain fit {plain:.3f} s, "
            f"{own_model['setting']} {fast:.3f} s, paired ratio {own_model['ratio_min']:.3f} / "
            f"{own_model['ratio_median']:.3f}, weights "
            f"{'identical' if own_model['identical'] else 'different'}.",
            "",
        ]
    rows = []
    for key in ("tracking", "tracking_full"):
        tracked = results.get(key)
        if tracked:
            rows.append(
                f"| tracking on / off, `train {tracked['variant']}` {tracked['epochs']} epochs "
                f"| {tracked['on_s']['median']:.2f} s / {tracked['off_s']['median']:.2f} s "
                f"(+{tracked['overhead_s']:.2f} s) | {tracked['ratio']['min']:.3f} / "
                f"{tracked['ratio']['median']:.3f} | <= 1.05 |"
            )
    rt = results.get("range_test")
    if rt:
        rows.append(
            f"| range-test stage, default settings (sweep alone) | "
            f"{rt['stage_s']['min']:.2f} / {rt['stage_s']['median']:.2f} s "
            f"({rt['sweep_s']['median']:.2f} s) | | < 15 s |"
        )
        if "process_s" in rt:
            rows.append(
                f"| `clrpipe range-test` as a new process (imports included) "
                f"| {rt['process_s']:.1f} s | | < 15 s |"
            )
    pipe = results.get("pipeline")
    if pipe:
        rows.append(
            f"| `dvc repro --force {' '.join(pipe['targets'])}` / article script "
            f"| {pipe['dvc_repro_s']['median']:.1f} s / {pipe['article_script_s']['median']:.1f} s"
            f" | {pipe['ratio']['min']:.2f} / {pipe['ratio']['median']:.2f} | |"
        )
    if results.get("serving"):
        rows += serving_markdown(results["serving"])
    if rows:
        lines += ["| measurement | seconds (min / median) | ratio (min / median) | target |",
                  "|---|---|---|---|", *rows, ""]
    about = results["machine"]
    lines.append(
        f"{about['cpus']} CPUs ({about['processor']}), {about['platform']}, Python "
        f"{about['python']}, TensorFlow {about['tensorflow']}, Keras {about['keras']}; "
        f"{results['repeats']} repeats; load average at start "
        f"{about['load_average_at_start'][0]:.2f}."
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------- the study


def measure_packing(csv: Path, repeats: int, log=print) -> dict:
    """Seconds of 5 seeds trained as one packed model against 5 separate trials, per dataset
    (the study's epochs and batch size, SGD 0.01), and the largest weight difference."""
    from clrpipe.pipeline.params import CardioData, StudyParams
    from clrpipe.study import datasets, packed

    cfg = config.load((f"data.raw={csv}",))
    study = StudyParams.model_validate(dict(cfg.study))
    cardio = CardioData.model_validate(dict(cfg.data))
    model_params = config.section(cfg, "model", ModelParams)
    seeds = tuple(range(5))
    found = {}
    for name in ("breast_cancer", "cardio"):
        ds = study.datasets[name]
        split = datasets.load_dataset(name, cardio=cardio, split_dir=Path("none"),
                                        test_size=study.test_size,
                                        validation_fraction=study.validation_fraction,
                                        seed=study.split_seed).split
        together, apart = [], []
        for repeat in range(repeats):
            started = time.perf_counter()
            result = packed.train_packed(
                model_params, seeds, lambda _: keras.optimizers.SGD(0.01), split.x, split.y,
                epochs=ds.epochs, batch_size=ds.batch_size, order_seed=study.order_seed,
                validation=(split.x_val, split.y_val), test=(split.x_test, split.y_test),
                output=split.output)
            together.append(time.perf_counter() - started)
            started = time.perf_counter()
            alone = []
            for seed in seeds:
                model = build_model(model_params, split.x.shape[1], seed, split.output)
                loop.compile_model(model, keras.optimizers.SGD(0.01), output=split.output)
                loop.fit(model, split.x, split.y, epochs=ds.epochs,
                             batch_size=ds.batch_size, validation=(split.x_val, split.y_val),
                             reshuffle_seed=study.order_seed)
                loop.evaluate(model, split.x_test, split.y_test, split.output)
                alone.append(model)
            apart.append(time.perf_counter() - started)
            log(f"  packing {name} {repeat + 1}/{repeats}: packed {together[-1]:.1f} s, "
                f"separate {apart[-1]:.1f} s")
        diff = max(
            float(np.max(np.abs(a - b.numpy())))
            for i, model in enumerate(alone)
            for a, b in zip(model.get_weights(),
                            [v for layer in result.model.layers
                             if layer.name.startswith(packed.seed_prefix(i))
                             for v in layer.trainable_weights], strict=True)
        )
        found[name] = {"epochs": ds.epochs, "batch_size": ds.batch_size, "rows": len(split.x),
                       "packed_s": stats(together), "separate_s": stats(apart),
                       "speedup_of_min": min(apart) / min(together),
                       "max_abs_weight_diff": diff}
    return found


def measure_study(csv: Path, log=print) -> dict:
    """Wall seconds of the whole study, `clrpipe study` as a new process in a temporary folder
    (the project's conf and params.yaml, an SQLite store there)."""
    with tempfile.TemporaryDirectory(prefix="clrpipe-study-") as folder:
        root = Path(folder)
        shutil.copytree(DEFAULT_PROJECT / "conf", root / "conf")
        shutil.copy(DEFAULT_PROJECT / "params.yaml", root / "params.yaml")
        log("whole study (clrpipe study) ...")
        seconds = run_command([clrpipe_exe(), "study", f"data.raw={csv}"], root)
        found = json.loads((root / "metrics" / "study.json").read_text())
    return {"wall_s": seconds, "stage_s": found["seconds"], "datasets": found["datasets"],
            "cpus": os.cpu_count()}


def study_markdown(results: dict) -> str:
    lines = ["| dataset | epochs | batch | 5 seeds packed (min s) | 5 separate trials (min s) "
             "| speed-up | max weight diff |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["packing"].items():
        lines.append(f"| {name} | {r['epochs']} | {r['batch_size']} | {r['packed_s']['min']:.2f} "
                     f"| {r['separate_s']['min']:.2f} | {r['speedup_of_min']:.2f}x | "
                     f"{r['max_abs_weight_diff']:.1e} |")
    if "study" in results:
        s = results["study"]
        lines += ["", f"Whole study ({', '.join(s['datasets'])}): {s['wall_s']:.0f} s wall "
                      f"({s['stage_s']:.0f} s in the stage) on {s['cpus']} cores."]
    return "\n".join(lines) + "\n"


def log(text: str) -> None:
    """Progress on stderr, so stdout holds only the tables."""
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=DEFAULT_PROJECT,
                        help="project whose data/split and params.yaml are used (read only)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV,
                        help="the raw cardio table, for the pipeline comparison")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every measurement")
    parser.add_argument("--quick", action="store_true",
                        help="only the epoch ratio (clrpipe's setting) and the range-test stage")
    parser.add_argument("--tracking-epochs", type=int,
                        help="epochs of both train stages timed with tracking on/off "
                             "(default: the project's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--tf-threads", type=int, help="limit TensorFlow to this many threads")
    parser.add_argument("--epoch-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serving-only", action="store_true",
                        help="only the served request and `clrpipe predict` measurements")
    parser.add_argument("--study", action="store_true",
                        help="the study instead: packing's speed-up and the whole study's time")
    parser.add_argument("--packing-only", action="store_true",
                        help="with --study: only the packing speed-up")
    args = parser.parse_args(argv)
    if args.study:
        results = {"machine": machine(), "repeats": args.repeats,
                   "packing": measure_packing(args.csv.resolve(), args.repeats, log)}
        if not args.packing_only:
            results["study"] = measure_study(args.csv.resolve(), log)
        print(study_markdown(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return results
    if args.tf_threads:
        loop.limit_threads(args.tf_threads)
    project = args.project.resolve()
    repeats = args.repeats
    if not (project / "data" / "split" / "train.parquet").is_file():
        parser.error(f"{project}/data/split/train.parquet: not found; run the split stage first")

    results: dict = {"machine": machine(), "repeats": repeats, "quick": args.quick}
    if args.serving_only:
        with tempfile.TemporaryDirectory(prefix="clrpipe-bench-") as folder:
            results["serving"] = measure_serving(project, args.csv.resolve(), Path(folder), log)
        print(markdown(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return results
    log("epoch timing ...")
    results["epoch"] = measure_epoch(project, repeats, args.quick, log)
    own_model = config.section(config.load(params_file=project / "params.yaml"), "model",
                               ModelParams)
    if not (args.quick or args.epoch_only) and results["epoch"]["model"] != own_model.model_dump():
        log("epoch timing with the project's model ...")
        results["epoch_project_model"] = measure_epoch(
            project, repeats, quick=True, log=log, project_model=True
        )
    if args.epoch_only:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return results
    if not args.quick:
        log("epoch timing with one TensorFlow thread ...")
        plain_min = results["epoch"]["variants"]["plain"]["epoch_s"]["min"]
        results["epoch"]["variants"].update(measure_epoch_one_thread(project, repeats, plain_min))
    with tempfile.TemporaryDirectory(prefix="clrpipe-bench-") as folder:
        workdir = Path(folder)
        log("range-test stage ...")
        results["range_test"] = measure_range_test(project, workdir, repeats)
        if not args.quick:
            results["range_test"]["process_s"] = range_test_process(project, workdir)
            log("tracking overhead ...")
            own = config.load(params_file=project / "params.yaml").train
            results["tracking"] = measure_tracking(
                project, workdir, repeats, args.tracking_epochs or own.baseline.epochs
            )
            results["tracking_full"] = measure_tracking(
                project, workdir, repeats, args.tracking_epochs or own.clr.epochs, variant="clr"
            )
    if not args.quick:
        log("dvc repro vs article script ...")
        results["pipeline"] = measure_pipeline(project, args.csv.resolve(), repeats, log)
        with tempfile.TemporaryDirectory(prefix="clrpipe-bench-") as folder:
            results["serving"] = measure_serving(project, args.csv.resolve(), Path(folder), log)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

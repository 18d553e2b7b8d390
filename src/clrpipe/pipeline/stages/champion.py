"""`champion` stage: the alias `champion` on the best trained model by validation score.

Candidates: `metrics/train_baseline.json`, `metrics/train_clr.json` and, when `compare` has run,
the `champion_candidate` of `metrics/compare.json` (the comparison's best network by mean
validation score, whatever its optimizer: SGD, Adam, schedule-free AdamW, Prodigy, Muon). Each
names the model version its stage registered. The highest final validation score wins (accuracy,
or R² for regression; a tie keeps the earlier: baseline, CLR, the comparison's), and with
`registry.promote: true` `models:/<name>@champion` points at it. Writes `metrics/champion.json`
(the choice, every candidate's score, the version, whether the alias moved) and logs it in the
stage's MLflow run. With `registry.promote: false` the alias stays where it was and `clrpipe
gate --promote` moves it on a passing gate.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from clrpipe.errors import ClrpipeError, first_line
from clrpipe.pipeline import config
from clrpipe.pipeline.outputs import atomic_outputs
from clrpipe.pipeline.params import Reads, RegistryParams
from clrpipe.pipeline.tracking import registry, runs

__all__ = ["CANDIDATES", "OUTPUT", "STAGES", "ChampionReads", "run"]

CANDIDATES = ("train_baseline", "train_clr", "compare")
OUTPUT = Path("metrics/champion.json")
COMPARE = Path("metrics/compare.json")


class ChampionReads(Reads):
    """What `champion` reads from params.yaml."""

    registry: RegistryParams


STAGES = {"champion": ChampionReads}


def _metrics(stage: str) -> dict:
    """A candidate's metrics: a training stage's file, or compare's `champion_candidate`."""
    path = Path("metrics") / f"{stage}.json"
    again = "clrpipe compare" if stage == "compare" else f"clrpipe train {stage[6:]}"
    if not path.is_file():
        raise ClrpipeError(f"{path}: not found; run `{again}` first")
    try:
        found = json.loads(path.read_text())
        if stage == "compare":
            found = found["champion_candidate"]
        next(k for k in found if k.startswith("final_val_"))
    except (ValueError, StopIteration, KeyError) as err:
        raise ClrpipeError(f"{path}: no final_val_<score> ({first_line(err) or 'missing'}); "
                           f"rerun `{again}`") from None
    return found


def _here(client, stage: str, candidate: dict) -> bool:
    """Whether `candidate`'s registered version is its own model in this tracking store. Versions
    are per store: a queued experiment logging to a server reuses a cached `compare` whose
    version was registered in another store; that candidate is left out with a note."""
    name, version = candidate.get("registered_model"), candidate.get("model_version")
    if name is None or version is None:
        return True
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException:
        found = None
    model = (candidate.get("serving_model_uri") or "").removeprefix("models:/")
    if found is not None and (not model or found.model_id in (None, model)):
        return True
    click.echo(f"champion: {stage}'s {name} version {version} is not in this tracking store "
               f"(registered elsewhere); left out (rerun `clrpipe {stage.replace('_', ' ')}` "
               "against this store to include it)", err=True)
    return False


def run(cfg: DictConfig) -> dict:
    """Choose the champion, move the alias (`registry.promote`), write metrics/champion.json."""
    p = config.reads(cfg, ChampionReads)
    found = {stage: _metrics(stage) for stage in CANDIDATES
             if stage != "compare" or COMPARE.is_file()}
    score = next(k for k in found[CANDIDATES[0]] if k.startswith("final_val_"))
    with runs.stage_run(cfg, "champion") as tracked, atomic_outputs(OUTPUT) as (tmp,):
        promote = p.registry.promote and tracked.active
        eligible = {s: c for s, c in found.items() if not promote or _here(tracked.client, s, c)}
        best = max(eligible or found, key=lambda stage: found[stage].get(score, float("-inf")))
        chosen = found[best]
        summary = {
            "stage": best, "score": score, "value": chosen[score],
            "candidates": {stage: found[stage].get(score) for stage in found},
            "method": chosen.get("method", best.removeprefix("train_")),
            "optimizer": chosen.get("optimizer", "sgd"),
            "registered_model": chosen.get("registered_model"),
            "model_version": chosen.get("model_version"), "promoted": False, "previous": None,
        }
        if promote and best in eligible and summary["model_version"] is not None:
            summary["previous"] = registry.promote(tracked.client, summary["registered_model"],
                                                   summary["model_version"])
            summary["promoted"] = True
        tracked.log_report(summary, OUTPUT.name)
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    where = (f"{registry.champion_uri(summary['registered_model'])} = version "
             f"{summary['model_version']}" if summary["promoted"] else "alias not moved")
    click.echo(f"champion: {best} ({score} {chosen[score]:.4f}); {where} -> {OUTPUT}")
    return summary

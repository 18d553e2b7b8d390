"""dvc.yaml cannot lie: every stage lists every module it runs and every key it reads (the
default pipeline's and the study's, `study/dvc.yaml`).

`tests/dvc_graph.py` computes both from the code; these tests check dvc.yaml against them, and
that the check itself catches the removal of any one entry.
"""

from __future__ import annotations

import copy

import pytest

from tests import dvc_graph

DVC_YAML = dvc_graph.load_pipelines()


def test_dvc_yaml_lists_every_code_dependency_and_param():
    assert dvc_graph.missing(DVC_YAML) == []


def _checked_entries():
    """(stage, kind, entry) for every code dep and param of dvc.yaml (data deps excluded)."""
    for name, stage in DVC_YAML["stages"].items():
        for dep in stage.get("deps", []):
            if not str(dep).startswith("${") and not str(dep).startswith(("metrics/", "data/")):
                yield name, "deps", dep
        for param in stage.get("params", []):
            yield name, "params", param


@pytest.mark.parametrize(("stage", "kind", "entry"), list(_checked_entries()))
def test_removing_any_one_entry_is_caught_naming_stage_and_entry(stage, kind, entry):
    broken = copy.deepcopy(DVC_YAML)
    broken["stages"][stage][kind].remove(entry)
    found = dvc_graph.missing(broken)
    prefix = f"{stage}: {kind} lacks "
    named = [line.removeprefix(prefix) for line in found if line.startswith(prefix)]
    assert named, found
    assert all(key == entry or key.startswith(f"{entry}.") for key in named), named


def test_reshuffle_is_a_param_of_every_training_stage():
    for stage in ("train_baseline", "train_clr", "compare"):
        assert "train.reshuffle" in DVC_YAML["stages"][stage]["params"]


def test_closure_follows_function_level_imports_but_not_other_cli_commands():
    compare = dvc_graph.code_deps("compare")
    assert "src/clrpipe/pipeline/comparison/parallel.py" in compare
    assert "src/clrpipe/pipeline/tracking/runs.py" in compare
    assert "legacy/tfa_train.py" in compare  # RUN_FILES of clrpipe.pipeline.training.legacy
    # imported only inside `clrpipe gate`:
    assert "src/clrpipe/pipeline/comparison/gate.py" not in compare
    assert "src/clrpipe/pipeline/cli.py" in dvc_graph.code_deps("fetch")
    assert "src/clrpipe/pipeline/entry.py" in dvc_graph.code_deps("fetch")  # the console script


@pytest.mark.parametrize("module", dvc_graph.STAGE_MODULES)
def test_no_stage_imports_another(module):
    entry = dvc_graph.stage_module(module)
    modules = dvc_graph.closure({entry: False})
    entries = {dvc_graph.stage_module(m) for m in dvc_graph.STAGE_MODULES}
    assert modules & entries == {entry}


def test_every_stage_entry_point_is_short():
    for module in dvc_graph.STAGE_MODULES:
        path = dvc_graph.module_file(dvc_graph.stage_module(module))
        lines = path.read_text().splitlines()
        assert len(lines) <= 150, (module, len(lines))

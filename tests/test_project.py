"""Project-level promises: README commands, CI script, config composition, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import config
from clrpipe.pipeline.outputs import atomic_outputs
from tests.conftest import REPO


def readme_commands() -> list[str]:
    lines = (REPO / "README.md").read_text().splitlines()
    return [line.strip() for line in lines[:4] if line.startswith("    ")]


def test_readme_starts_with_two_commands_and_ci_runs_the_second_then_the_gate():
    setup_and_run, setup_and_test = readme_commands()
    assert setup_and_run.endswith("dvc repro")
    assert setup_and_test.endswith("pytest")
    commands = [
        line for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert commands[-2:] == [setup_and_test, "python3 -m uv run --frozen python ci/pipeline.py"]
    assert (REPO / "ci" / "pipeline.py").is_file() and (REPO / "ci" / "reference.json").is_file()


def test_params_yaml_is_conf_composed(monkeypatch):
    monkeypatch.chdir(REPO)
    committed = OmegaConf.to_container(OmegaConf.load(REPO / "params.yaml"))
    assert committed == OmegaConf.to_container(config.compose()), "run `clrpipe params`"


def test_overrides_set_existing_keys_and_swap_groups(project):
    (project / "conf" / "data" / "other.yaml").write_text("raw: x.csv\n")
    cfg = config.load(["split.seed=7", "+split.note=hi", "data=other"])
    assert cfg.split.seed == 7 and cfg.split.note == "hi"
    assert OmegaConf.to_container(cfg.data) == {"raw": "x.csv"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("split.sed=1", "override 'split.sed': no such key in params.yaml (prefix with + to add"),
        ("data=nothing", "override 'data=nothing': no conf/data/nothing.yaml; choose one of: "
                         "cardio"),
        ("split.seed", "override 'split.seed': expected key=value"),
    ],
)
def test_bad_overrides_name_the_key(project, override, message):
    with pytest.raises(ClrpipeError) as err:
        config.load([override])
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_atomic_outputs_leave_nothing_on_failure(tmp_path):
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    with pytest.raises(RuntimeError), atomic_outputs(kept, tmp_path / "new.txt") as temps:
        for temp in temps:
            temp.write_text("partial")
        raise RuntimeError("stage failed")
    assert kept.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]
    with atomic_outputs(kept, tmp_path / "new.txt") as temps:
        for temp in temps:
            temp.write_text("done")
    assert [Path(p).read_text() for p in (kept, tmp_path / "new.txt")] == ["done", "done"]

"""The `auto` sizes (`clrpipe.pipeline.data.sizing`): the rule on 150 to 50M rows, and how
`auto` is checked in params.yaml and resolved (an explicit number wins, cardio has none)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from clrpipe.errors import ClrpipeError
from clrpipe.pipeline import config
from clrpipe.pipeline.data import sizing
from clrpipe.pipeline.data.sizing import Sizing

TABLE = ["data=table", "data.raw=data/raw/mine.csv", "data.target=label"]


@pytest.mark.parametrize(("rows", "task", "classes", "expected"), [
    (150, "binary", 2, Sizing(16, 50, 5.0, 100, 15)),
    (5_000, "multiclass", 3, Sizing(32, 50, 5.0, 400, 500)),
    (300_000, "regression", 0, Sizing(2048, 17, 1.7, 400, 2000)),
    (50_000_000, "binary", 2, Sizing(8192, 1, 0.1, 400, 2000)),
])
def test_rule_from_150_to_50m_rows(rows, task, classes, expected):
    got = sizing.rule(rows, task, classes)
    assert got == expected
    assert got.batch_size <= rows // 4 and got.validation_rows + got.batch_size <= rows
    assert got.epochs / got.step_size_epochs == pytest.approx(10)  # five whole triangles


def test_rule_keeps_a_batch_and_every_class_on_tiny_tables():
    got = sizing.rule(8, "multiclass", 3)
    assert got.batch_size == 2  # a quarter of the rows
    assert got.validation_rows == 6  # two rows per class, leaving one batch to sweep
    with pytest.raises(ValueError, match="rows: expected at least 2 training rows, got 1"):
        sizing.rule(1, "binary", 2)


def test_table_config_is_auto_and_resolves_from_rows():
    cfg = config.compose(TABLE)
    config.validated(cfg)  # auto passes the whole-file check
    resolved, done = sizing.resolve(cfg, 4_000, "binary", 2)
    assert done == {
        "train.baseline.batch_size": 16, "train.baseline.epochs": 50,
        "train.clr.batch_size": 16, "train.clr.epochs": 50,
        "schedule.step_size_epochs": 5.0, "range_test.num_steps": 400,
        "range_test.validation_rows": 400,
    }
    assert resolved.train.clr.batch_size == 16 and cfg.train.clr.batch_size == "auto"
    config.validated(resolved)


def test_an_explicit_number_wins_and_the_half_cycle_follows_it():
    cfg = config.compose([*TABLE, "train.clr.epochs=6", "range_test.num_steps=123"])
    resolved, done = sizing.resolve(cfg, 4_000, "binary", 2)
    assert resolved.train.clr.epochs == 6 and resolved.range_test.num_steps == 123
    assert done["schedule.step_size_epochs"] == pytest.approx(0.6)
    assert "train.clr.epochs" not in done and "range_test.num_steps" not in done


def test_cardio_keeps_the_articles_numbers():
    cfg = config.compose()
    resolved, done = sizing.resolve(cfg, 55_000, "binary", 2)
    assert done == {}
    assert (resolved.train.clr.batch_size, resolved.train.clr.epochs) == (350, 50)
    assert (resolved.range_test.num_steps, resolved.range_test.validation_rows) == (400, 2000)


def test_a_schedule_without_half_cycle_drops_the_auto_key():
    cfg = config.compose([*TABLE, "schedule=constant"])
    config.validated(cfg)
    resolved, done = sizing.resolve(cfg, 4_000, "binary", 2)
    assert "step_size_epochs" not in resolved.schedule
    assert "schedule.step_size_epochs" not in done
    stepped = config.compose([*TABLE, "schedule.step_size=100"])
    resolved, _ = sizing.resolve(stepped, 4_000, "binary", 2)
    assert resolved.schedule.step_size == 100 and resolved.schedule.step_size_epochs is None


def test_auto_elsewhere_is_a_one_line_error():
    cfg = config.compose([*TABLE, "range_test.seeds=auto"])
    with pytest.raises(ClrpipeError) as err:
        config.validated(cfg)
    assert str(err.value).startswith("params.yaml: range_test.seeds: ")
    assert "auto" in str(err.value) and "\n" not in str(err.value)


def test_params_override_loads_the_table_sizes_too(tmp_path):
    composed = tmp_path / "params.yaml"
    OmegaConf.save(config.compose(), composed)
    cfg = config.load(TABLE, params_file=composed)
    assert cfg.train.clr.batch_size == "auto" and cfg.data.kind == "table"
    assert cfg.train.baseline.learning_rate == 0.01  # merged, not replaced


def test_auto_report_keeps_the_stages_keys():
    resolved = {"train.clr.batch_size": 16, "train.baseline.epochs": 50,
                "range_test.num_steps": 100}
    assert sizing.auto_report(resolved, "range_test.", "train.clr.batch_size") == {
        "auto": {"train.clr.batch_size": 16, "range_test.num_steps": 100}}
    assert sizing.auto_report(resolved, "schedule.") == {}

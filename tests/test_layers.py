"""The package's layers: the library at the top of `clrpipe` never imports the pipeline or the
study (at any depth, function-level imports included), so it can ship without them."""

from __future__ import annotations

import pytest

from tests import dvc_graph

LIBRARY = sorted(
    f"clrpipe.{path.stem}" for path in (dvc_graph.SRC / "clrpipe").glob("*.py")
    if path.stem != "__init__"
)


def test_the_library_modules_are_the_expected_ones():
    assert {"clrpipe.finder", "clrpipe.range_test", "clrpipe.schedules", "clrpipe.optimizers",
            "clrpipe.settings"} <= set(LIBRARY)


@pytest.mark.parametrize("module", LIBRARY)
def test_a_library_module_imports_neither_pipeline_nor_study(module):
    reached = dvc_graph.closure({module: False})
    assert not {m for m in reached if m.startswith(("clrpipe.pipeline", "clrpipe.study"))}

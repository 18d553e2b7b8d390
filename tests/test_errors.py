"""`ClrpipeError` is a `ValueError`: a caller's `except ValueError` catches a misuse, and no
`except ValueError` inside clrpipe swallows one (it only rewords third-party errors)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import keras
import numpy as np

from clrpipe import lr_range_test
from clrpipe.errors import ClrpipeError
from clrpipe.pipeline.data.tasks import Dataset
from clrpipe.schedules import build_schedule
from clrpipe.settings import ConstantSchedule

SRC = Path(__file__).resolve().parents[1] / "src"


def caught_as_value_error(call) -> ValueError:
    try:
        call()
    except ValueError as err:
        return err
    raise AssertionError("no ValueError")


def test_a_library_misuse_is_caught_by_except_value_error():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    x, y = np.zeros((8, 3), "float32"), np.zeros(8, "float32")
    err = caught_as_value_error(lambda: lr_range_test(model, x, y))
    assert type(err) is ClrpipeError
    assert str(err).startswith("model: not compiled (no optimizer)") and "\n" not in str(err)
    err = caught_as_value_error(
        lambda: build_schedule(ConstantSchedule(learning_rate=0.01), 0, batch_size=32))
    assert type(err) is ClrpipeError
    assert str(err) == "train_rows: expected a positive integer, got 0"


def test_a_reworded_third_party_value_error_is_one_clrpipe_error_naming_the_file(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"features": ["a"]}))
    err = caught_as_value_error(lambda: Dataset.read(tmp_path))
    assert type(err) is ClrpipeError
    assert str(err) == (f"{tmp_path / 'dataset.json'}: not a split description ('output'); "
                        "rerun `clrpipe split`")


# --- the guard: no `try` that catches ValueError runs clrpipe code raising ClrpipeError ------


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _raises_clrpipe(node: ast.AST) -> bool:
    return (isinstance(node, ast.Raise) and node.exc is not None
            and ast.unparse(node.exc).split("(")[0].endswith("ClrpipeError"))


def _kinds(handler: ast.ExceptHandler) -> set[str]:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {k.id for k in kinds if isinstance(k, ast.Name)}


def _catches_value_error_first(node: ast.Try) -> bool:
    """Whether a ClrpipeError would land in an `except` naming ValueError (not in an earlier
    `except ClrpipeError`). Broader handlers (`Exception`) caught it before it was one."""
    for handler in node.handlers:
        if "ClrpipeError" in _kinds(handler):
            return False
        if "ValueError" in _kinds(handler):
            return True
    return False


class _Module:
    """A clrpipe module's functions (`f`, `Class.f`) and the clrpipe names it imports."""

    def __init__(self, path: Path):
        self.name = _module_name(path)
        self.tree = ast.parse(path.read_text())
        self.imported: dict[str, str] = {}  # local name -> "module" or "module:function"
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clrpipe"):
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = f"{node.module}:{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("clrpipe") and alias.asname:
                        self.imported[alias.asname] = alias.name
        self.functions: dict[str, ast.AST] = {}
        for node in self.tree.body:
            if isinstance(node, ast.FunctionDef):
                self.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                self.functions.update({f"{node.name}.{f.name}": f for f in node.body
                                       if isinstance(f, ast.FunctionDef)})

    def resolve(self, call: ast.Call, owner: str | None, modules: dict) -> str | None:
        """`module:function` a call runs, when it is clrpipe's and can be told from the code."""
        func = call.func
        if isinstance(func, ast.Name):
            if func.id in self.functions:
                return f"{self.name}:{func.id}"
            return self.imported.get(func.id)
        if not isinstance(func, ast.Attribute) or not isinstance(func.value, ast.Name):
            return None
        receiver = func.value.id
        if receiver in ("self", "cls") and owner:
            return f"{self.name}:{owner}.{func.attr}"
        if f"{receiver}.{func.attr}" in self.functions:  # a class's own static/class method
            return f"{self.name}:{receiver}.{func.attr}"
        target = self.imported.get(receiver, "")
        module = target.replace(":", ".")
        if module in modules:  # `from clrpipe.pipeline import config` -> config.load
            return f"{module}:{func.attr}"
        if target in modules:
            return f"{target}:{func.attr}"
        if ":" in target:  # an imported class: Class.method
            return f"{target}.{func.attr}"
        return None


def _raisers(modules: dict[str, _Module]) -> set[str]:
    """Every clrpipe function that raises ClrpipeError, itself or through clrpipe calls."""
    calls: dict[str, set[str]] = {}
    raisers: set[str] = set()
    for module in modules.values():
        for name, node in module.functions.items():
            key, owner = f"{module.name}:{name}", name.rpartition(".")[0] or None
            inside = list(ast.walk(node))
            if any(_raises_clrpipe(n) for n in inside):
                raisers.add(key)
            calls[key] = {module.resolve(n, owner, modules) for n in inside
                          if isinstance(n, ast.Call)} - {None}
    while grown := {k for k, called in calls.items() if k not in raisers and called & raisers}:
        raisers |= grown
    return raisers


def swallowing_sites() -> list[str]:
    """`path:line` of each `try` that catches ValueError around a clrpipe call or raise that can
    raise ClrpipeError, with what it calls."""
    modules = {m.name: m for m in map(_Module, sorted((SRC / "clrpipe").rglob("*.py")))}
    raisers = _raisers(modules)
    found = []
    for module in modules.values():
        owners = {id(n): c.name for c in ast.walk(module.tree) if isinstance(c, ast.ClassDef)
                  for n in ast.walk(c)}
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Try) or not _catches_value_error_first(node):
                continue
            inside = [n for stmt in node.body for n in ast.walk(stmt)]
            bad = [ast.unparse(n.exc)[:40] for n in inside if _raises_clrpipe(n)]
            bad += [r for n in inside if isinstance(n, ast.Call)
                    and (r := module.resolve(n, owners.get(id(n)), modules)) in raisers]
            if bad:
                found.append(f"{module.name}:{node.lineno} {bad}")
    return found


def test_no_except_value_error_in_clrpipe_swallows_a_clrpipe_error():
    assert swallowing_sites() == []


def test_the_guard_sees_a_clrpipe_error_raised_two_calls_deep(tmp_path, monkeypatch):
    package = tmp_path / "clrpipe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "inner.py").write_text(
        "from clrpipe.errors import ClrpipeError\n\n"
        "def check(v):\n    if v < 0:\n        raise ClrpipeError('v: expected >= 0')\n\n"
        "def parse(text):\n    return check(int(text))\n")
    (package / "outer.py").write_text(
        "from clrpipe import inner\n\n"
        "def read(text):\n    try:\n        return inner.parse(text)\n"
        "    except ValueError:\n        return None\n")
    monkeypatch.setattr(f"{__name__}.SRC", tmp_path)
    assert swallowing_sites() == ["clrpipe.outer:4 ['clrpipe.inner:parse']"]

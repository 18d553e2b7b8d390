"""What each DVC stage really depends on, computed from the code, and what `dvc.yaml` lacks.

Code: the project modules a stage's process imports, transitively: the `clrpipe` console
script's module (`entry`, from pyproject.toml) and `cli`'s top-level imports (the command DVC
runs) plus everything its stage module imports, at any depth and
inside functions too (a function-level import may run), and the files a module names in its
`RUN_FILES` (scripts it runs in another interpreter). Every stage also depends on `uv.lock`:
the locked library versions change results.

Params: the leaf keys of the stage's `Reads` projection (its module's `STAGES`), which is the
only view of params.yaml its code gets. A key is covered by a `params:` entry that is the key or
one of its prefixes, or by `${key}` in the stage's deps or outs (a path DVC tracks itself).
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from clrpipe.pipeline.cli import stage_module

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
STAGE_MODULES = ("fetch", "prepare", "split", "range_test", "train", "compare", "champion", "study")
DVC_FILES = ("dvc.yaml", "study/dvc.yaml")
"""The pipelines: the default one, and the study's (run by `dvc repro study/dvc.yaml`)."""
ALWAYS = ("uv.lock",)
SCRIPT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["clrpipe"]
"""`module:function` the `clrpipe` command DVC runs starts in."""


def module_file(name: str) -> Path | None:
    """The source file of project module `name` (a package's `__init__.py`), if it exists."""
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, less the bodies of `if TYPE_CHECKING:` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path, name: str, top_level_only: bool) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else _runtime_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def closure(roots: dict[str, bool]) -> set[str]:
    """Project modules imported from `roots` ({module: top-level imports only}), transitively.
    Importing `a.b.c` runs `a/__init__`, `a/b/__init__` and `a/b/c`."""
    seen: set[str] = set()
    todo = []
    for root, top_level_only in roots.items():
        todo += [(name, top_level_only and name == root) for name in _with_parents(root)]
    while todo:
        name, top = todo.pop()
        path = module_file(name)
        if path is None or name in seen:
            continue
        seen.add(name)
        for imported in _imports(path, name, top):
            if imported.split(".")[0] == "clrpipe":
                todo.extend((n, False) for n in _with_parents(imported))
    return seen


@functools.cache
def code_deps(module: str) -> frozenset[str]:
    """Repo-relative files a stage's process runs: its modules, their RUN_FILES, `uv.lock`."""
    modules = closure({SCRIPT.split(":")[0]: True, "clrpipe.pipeline.cli": True,
                       stage_module(module): False})
    files = {str(module_file(m).relative_to(REPO)) for m in modules}
    for name in modules:
        files.update(getattr(importlib.import_module(name), "RUN_FILES", ()))
    return frozenset(files | set(ALWAYS))


def _fields(model: type[BaseModel], prefix: str) -> Iterator[str]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


@functools.cache
def param_keys(reads: type[BaseModel]) -> frozenset[str]:
    """Dotted leaf keys a `Reads` projection holds (a union or mapping is one leaf)."""
    typing.get_type_hints(reads)  # resolve postponed annotations
    return frozenset(_fields(reads, ""))


@functools.cache
def stage_reads() -> dict[str, tuple[str, type[BaseModel]]]:
    """DVC stage name -> (stage module, its `Reads` model), from every module's `STAGES`."""
    found = {}
    for module in STAGE_MODULES:
        for stage, reads in importlib.import_module(stage_module(module)).STAGES.items():
            found[stage] = (module, reads)
    return found


def load_pipelines() -> dict:
    """Every stage of `DVC_FILES`, as one `dvc.yaml`-shaped mapping (stage names are unique
    across them)."""
    import yaml

    stages: dict = {}
    for name in DVC_FILES:
        stages.update(yaml.safe_load((REPO / name).read_text())["stages"])
    return {"stages": stages}


def _entries(items) -> list[str]:
    out = []
    for item in items or ():
        out.extend(item if isinstance(item, dict) else [item])
    return [str(entry) for entry in out]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def missing(dvc_yaml: dict) -> list[str]:
    """One line per missing entry: `<stage>: deps lacks <file>` / `params lacks <key>`, and
    stages that `dvc.yaml` and the code disagree on."""
    problems = []
    stages = dvc_yaml.get("stages", {})
    declared = stage_reads()
    for name in sorted(set(declared) - set(stages)):
        problems.append(f"{name}: a stage in the code (STAGES) but not in dvc.yaml")
    for name in sorted(set(stages) - set(declared)):
        problems.append(f"{name}: in dvc.yaml but no stage module declares it in STAGES")
    for name in sorted(set(declared) & set(stages)):
        module, reads = declared[name]
        stage = stages[name]
        deps = _entries(stage.get("deps"))
        paths = " ".join([*deps, *_entries(stage.get("outs")), *_entries(stage.get("metrics"))])
        interpolated = set(re.findall(r"\$\{([^}]+)\}", paths))
        for file in sorted(code_deps(module)):
            if not _covered(file, deps):
                problems.append(f"{name}: deps lacks {file}")
        params = _entries(stage.get("params"))
        for key in sorted(param_keys(reads)):
            prefixes = _with_parents(key)
            if key not in interpolated and not any(p in params for p in prefixes):
                problems.append(f"{name}: params lacks {key}")
    return problems


if __name__ == "__main__":  # print what each stage needs, to paste into dvc.yaml
    for stage, (module, reads) in stage_reads().items():
        print(f"{stage}:\n  deps:", *sorted(code_deps(module)), sep="\n    - ")
        print("  params:", *sorted(param_keys(reads)), sep="\n    - ")

"""The house: one boundary (only ``integrations/`` and ``pipelines/`` import Kedro or MLflow), no import cycle,
``__init__.py`` files that only re-export, the rooms along the data's way, and tests that mirror them (no test
module imports another).

Static checks read the source (AST), so they see every import statement, function-local ones included; the
dynamic check imports the library in a fresh process and looks at ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import toptune

TESTS = Path(__file__).resolve().parent
PACKAGE = Path(toptune.__file__).resolve().parent
FRAMEWORKS = ("kedro", "kedro_datasets", "kedro_mlflow", "mlflow")
ROOMS = (
    "config",
    "data",
    "model",
    "prefix",
    "cache",
    "train",
    "evaluate",
    "serve",
    "inspect",
    "probe",
    "sweep",
    "io",
    "bench",
    "integrations",
    "pipelines",
)
LAYER = ("toptune.integrations", "toptune.pipelines")
"""The Kedro/MLflow layer: these packages may import the frameworks."""
ENTRY = {"toptune.settings", "toptune.pipeline_registry", "toptune.__main__", "toptune.cli"}
"""Kedro's required names (``toptune.cli`` re-exports ``integrations.cli`` under the name Kedro imports)."""


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, and its source file (walked without importing modules)."""
    out = {"toptune": PACKAGE / "__init__.py"}
    for info in pkgutil.walk_packages(toptune.__path__, "toptune."):
        base = Path(info.module_finder.path) / info.name.rsplit(".", 1)[-1]
        out[info.name] = base / "__init__.py" if info.ispkg else base.with_suffix(".py")
    return out


MODULES = modules()
LIBRARY = sorted(n for n in MODULES if n not in ENTRY and not any(n == p or n.startswith(p + ".") for p in LAYER))


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from … import`` names (relative levels resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    base = parts[: len(parts) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements of ``tree``: all of them, or (``module_level``) those run when the module is imported
    (not inside a function, not under ``if TYPE_CHECKING:``)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if module_level and isinstance(child, ast.If) and is_type_checking(child):
                for other in child.orelse:
                    visit(ast.Module(body=[other], type_ignores=[]))
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def imported(name: str, module_level: bool = False) -> set[str]:
    """The modules ``name``'s source imports: ``from a.b import c`` names ``a.b.c`` when that is a module of
    the package, else ``a.b``."""
    path = MODULES[name]
    out: set[str] = set()
    for node in import_nodes(ast.parse(path.read_text(), str(path)), module_level):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
            continue
        base = absolute(node, name, path.name == "__init__.py")
        subs = {f"{base}.{a.name}" for a in node.names} & MODULES.keys()
        out |= subs if subs and len(subs) == len(node.names) else subs | {base}
    return out


def test_library_imports_no_framework_statically():
    """Every import statement of every library module, function-local ones included."""
    offenders = {n: sorted(m for m in imported(n) if m.split(".")[0] in FRAMEWORKS) for n in LIBRARY}
    offenders = {n: m for n, m in offenders.items() if m}
    assert not offenders, f"library modules importing Kedro/MLflow: {offenders}"


@pytest.mark.slow
def test_library_imports_no_framework_when_imported():
    assert {"toptune.config", "toptune.data.table", "toptune.cache.build", "toptune.train.loop"} <= set(LIBRARY)
    code = (
        f"import importlib, json, sys\nfor m in {LIBRARY!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    pulled = json.loads(out.stdout.strip().splitlines()[-1])
    assert not pulled, f"importing the library pulled in: {pulled[:20]}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_no_import_cycle():
    """Module-level imports between modules of the package (a function-local import runs after the module
    loaded; an ``if TYPE_CHECKING:`` block never runs)."""
    graph = {n: {m for m in imported(n, module_level=True) if m in MODULES and m != n} for n in MODULES}
    found = cycles(graph)
    assert not found, f"import cycles: {found}"


def test_init_files_only_re_export():
    """An ``__init__.py`` holds a docstring, imports and ``__all__`` (dunder metadata such as ``__version__``
    too): no function, class or logic a reader would not look for there."""
    offenders = {}
    for name, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        body = ast.parse(path.read_text()).body
        bad = [
            f"line {node.lineno}: {type(node).__name__}"
            for node in body
            if not (
                isinstance(node, (ast.Import, ast.ImportFrom))
                or (
                    isinstance(node, ast.Expr)
                    and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)
                )
                or (
                    isinstance(node, (ast.Assign, ast.AnnAssign))
                    and all(
                        isinstance(t, ast.Name) and t.id.startswith("__") and t.id.endswith("__")
                        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    )
                )
            )
        ]
        if bad:
            offenders[name] = bad
    assert not offenders, f"logic in __init__.py: {offenders}"


def test_the_rooms_exist():
    missing = [room for room in ROOMS if not (PACKAGE / room / "__init__.py").is_file()]
    assert not missing, f"rooms missing from {PACKAGE}: {missing}"


def test_tests_mirror_the_rooms():
    """Each test module lives in the room it tests (``tests/<room>/``), beside only tests/test_house.py."""
    loose = sorted(p.name for p in TESTS.glob("test_*.py") if p.name != "test_house.py")
    assert not loose, f"test modules outside a room: {loose}"
    rooms = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}  # the rooms above and config/
    strays = sorted(str(p.relative_to(TESTS)) for p in TESTS.glob("*/test_*.py") if p.parent.name not in rooms)
    assert not strays, f"test modules in a folder that is no room of the package: {strays}"


def test_no_test_module_imports_another():
    """Shared fixtures live in conftest.py, shared helpers in tests/support/: a test module imports neither
    another test module nor a conftest (pytest loads those itself)."""
    offenders = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        names = set()
        for node in import_nodes(ast.parse(path.read_text()), module_level=False):
            names |= {a.name for a in node.names} if isinstance(node, ast.Import) else {node.module or ""}
            if isinstance(node, ast.ImportFrom) and node.level:  # `from . import test_x`
                names |= {a.name for a in node.names}
        bad = sorted(n for n in names if n.split(".")[-1].startswith("test_") or n.split(".")[-1] == "conftest")
        if bad:
            offenders[str(path.relative_to(TESTS))] = bad
    assert not offenders, f"test modules importing test modules or conftest: {offenders}"


def test_test_basenames_are_unique():
    """pytest's default import mode imports each test file by its basename."""
    names = [p.name for p in TESTS.rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)

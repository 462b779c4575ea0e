"""The house: the library never imports Kedro or MLflow (only ``integrations/`` and ``pipelines/`` do), no
import cycle, ``__init__.py`` files that only re-export, the rooms along the data's way, and tests that
mirror them (no test module imports another)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


TESTS = Path(__file__).resolve().parent


def imported_names(tree: ast.AST) -> set[str]:
    """Every module an ``import`` / ``from … import`` statement anywhere in ``tree`` names (absolute)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_test_module_imports_another():
    """Shared fixtures live in conftest.py, shared helpers in tests/support/: a test module imports neither
    another test module nor a conftest (pytest loads those itself)."""
    offenders = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        bad = sorted(n for n in imported_names(ast.parse(path.read_text()))
                     if n.split(".")[-1].startswith("test_") or n.split(".")[-1] == "conftest")
        if bad:
            offenders[str(path.relative_to(TESTS))] = bad
    assert not offenders, f"test modules importing test modules or conftest: {offenders}"


def test_test_basenames_are_unique():
    """pytest's default import mode imports each test file by its basename."""
    names = [p.name for p in TESTS.rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_library_modules_import_neither_kedro_nor_mlflow():
    library = ["toptune." + m for m in ("config", "data", "model", "prefix", "cache", "train", "serve")]
    code = (f"import importlib, sys\nfor m in {library!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kedro', 'mlflow', 'kedro_mlflow', 'kedro_datasets'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"library pulled in: {out.stdout} {out.stderr[-2000:]}"


"""The library (src/toptune/*.py and its packages) never imports Kedro or MLflow; only the pipelines layer does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import toptune

ROOT = Path(toptune.__file__).parent
LIBRARY = sorted([p.stem for p in ROOT.glob("*.py")
                  if p.stem not in {"__main__", "settings", "pipeline_registry", "hooks", "datasets", "cli"}]
                 + [p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in {"pipelines", "benchlog"}])


def test_library_modules_import_neither_kedro_nor_mlflow():
    assert {"config", "data", "model", "split", "memory", "bench", "tokenizer", "train", "tiny", "families"} <= set(LIBRARY)
    code = (f"import importlib, sys\nfor m in {LIBRARY!r}: importlib.import_module('toptune.' + m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kedro', 'mlflow', 'kedro_mlflow', 'kedro_datasets'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"library pulled in: {out.stdout} {out.stderr[-2000:]}"

"""A test project (the repository's configuration and bundled table, code from the installed package) and
a real Kedro session run in this process."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

ROOT = Path(__file__).resolve().parents[2]


def make_project(dest: Path) -> Path:
    """A copy of the project's configuration and bundled table in ``dest`` (code comes from the package)."""
    shutil.copytree(ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    # An absolute store: MLflow caches one engine per URI, and a relative sqlite URI would follow the first
    # test project's working directory for the rest of this (long-lived) process.
    mlflow_yml = dest / "conf" / "base" / "mlflow.yml"
    mlflow_yml.write_text(mlflow_yml.read_text().replace("sqlite:///mlflow.db", f"sqlite:///{dest / 'mlflow.db'}"))
    (dest / "data" / "01_raw").mkdir(parents=True)
    shutil.copy(ROOT / "data" / "01_raw" / "reviews.csv", dest / "data" / "01_raw")
    shutil.copy(ROOT / "pyproject.toml", dest)
    (dest / "src").mkdir()  # Kedro checks that the source dir exists; the code is the installed package
    (dest / ".telemetry").write_text("consent: false\n")
    return dest


def nested(params: dict) -> dict:
    """``{"training.epochs": 1}`` → ``{"training": {"epochs": 1}}``, as ``kedro run --params`` does."""
    out: dict = {}
    for key, value in params.items():
        group, name = key.split(".", 1)
        out.setdefault(group, {})[name] = value
    return out


def run(project: Path, params: dict, pipeline: str | None = None):
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=nested(params)) as session:
        out = session.run(pipeline_name=pipeline)
    # kedro-mlflow closes its run; nothing may stay on MLflow's stack in a long-lived process.
    assert mlflow.active_run() is None, f"kedro run --pipeline {pipeline or '__default__'} left an MLflow run active"
    return out

"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# Run in this order by `kedro run`: data → (prefix cache) → train → evaluate → report.
DEFAULT = ("data", "cache", "train", "evaluate", "report")


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline by its directory name, and ``__default__`` = the training run."""
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum((pipelines[name] for name in DEFAULT if name in pipelines), Pipeline([]))
    return pipelines

"""``kedro run --pipeline sweep``: Optuna trials of the training run on one prefix cache."""

from toptune.pipelines.sweep.pipeline import create_pipeline

__all__ = ["create_pipeline"]

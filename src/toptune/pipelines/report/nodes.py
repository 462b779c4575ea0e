"""Nodes of the ``report`` pipeline."""

from __future__ import annotations

from toptune.evaluate.plots import curves_figure
from toptune.train.loop import TrainResult


def plot_curves(train_summary: dict) -> object:
    """Loss by step, validation loss/accuracy/macro-F1 by epoch and the kept epoch, from the training summary."""
    return curves_figure(
        TrainResult(
            steps=train_summary["steps"],
            epochs=train_summary["epochs"],
            train_seconds=train_summary["train_seconds"],
            best=train_summary.get("best"),
        )
    )

"""The run's plots (matplotlib): confusion matrix, loss / accuracy curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files, never shown

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from toptune.train.loop import TrainResult


def confusion_figure(logits: np.ndarray, labels: np.ndarray, id2label: dict[int, str]) -> Figure:
    """Confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    ids = sorted(id2label)
    cm = confusion_matrix(labels, logits.argmax(-1), labels=ids)
    fig, ax = plt.subplots(figsize=(1.2 * len(ids) + 2.5, 1.2 * len(ids) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(ids)), [id2label[i] for i in ids], rotation=30, ha="right")
    ax.set_yticks(range(len(ids)), [id2label[i] for i in ids])
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test confusion matrix (n={cm.sum()})")
    fig.tight_layout()
    return fig


def curves_figure(result: TrainResult) -> Figure:
    """Training loss by step, validation loss, accuracy and macro-F1 by epoch, the kept epoch marked."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    if result.steps:
        ax_loss.plot([s["step"] for s in result.steps], [s["loss"] for s in result.steps], label="train loss (by step)")
    steps_per_epoch = max((s["step"] for s in result.steps), default=0) / max(len(result.epochs), 1)
    ends = [(e["epoch"] + 1) * steps_per_epoch for e in result.epochs]
    if result.epochs and "val_loss" in result.epochs[0]:
        ax_loss.plot(ends, [e["val_loss"] for e in result.epochs], "o-", label="val loss (by epoch)")
        ax_acc.plot(
            [e["epoch"] + 1 for e in result.epochs],
            [e["val_accuracy"] for e in result.epochs],
            "o-",
            label="val accuracy",
        )
    if result.epochs and "val_macro_f1" in result.epochs[0]:
        ax_acc.plot(
            [e["epoch"] + 1 for e in result.epochs],
            [e["val_macro_f1"] for e in result.epochs],
            "s--",
            label="val macro-F1",
        )
    if result.best is not None:
        ax_acc.axvline(
            result.best["epoch"] + 1, color="grey", linestyle=":", label=f"kept: epoch {result.best['epoch'] + 1}"
        )
    ax_loss.set_xlabel("optimiser step")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.legend()
    fig.tight_layout()
    return fig

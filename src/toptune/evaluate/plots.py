"""The run's plots (matplotlib): confusion matrix, loss / accuracy curves, per-class precision-recall curves,
predicted-vs-true and residuals of a regressor."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files, never shown

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve

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
    """Training loss by step, validation loss by epoch (left); every other validation metric by epoch (right:
    accuracy and macro-F1, the multi-label F1s, or the regression errors and correlations), the kept epoch marked."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    if result.steps:
        ax_loss.plot([s["step"] for s in result.steps], [s["loss"] for s in result.steps], label="train loss (by step)")
    steps_per_epoch = max((s["step"] for s in result.steps), default=0) / max(len(result.epochs), 1)
    ends = [(e["epoch"] + 1) * steps_per_epoch for e in result.epochs]
    if result.epochs and "val_loss" in result.epochs[0]:
        ax_loss.plot(ends, [e["val_loss"] for e in result.epochs], "o-", label="val loss (by epoch)")
    names = [k for k in (result.epochs[0] if result.epochs else {}) if k.startswith("val_") and k != "val_loss"]
    values = []
    for name, style in zip(names, ("o-", "s--", "^-.", "v:", "d-", "x--"), strict=False):
        values += [e[name] for e in result.epochs]
        ax_val.plot(
            [e["epoch"] + 1 for e in result.epochs],
            [e[name] for e in result.epochs],
            style,
            label=name.replace("_", " "),
        )
    if result.best is not None:
        ax_val.axvline(
            result.best["epoch"] + 1, color="grey", linestyle=":", label=f"kept: epoch {result.best['epoch'] + 1}"
        )
    ax_loss.set_xlabel("optimiser step")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_val.set_xlabel("epoch")
    if values and min(values) >= 0 and max(values) <= 1:  # shares and F1s: on one fixed scale
        ax_val.set_ylim(0, 1.02)
    ax_val.legend(fontsize="small")
    fig.tight_layout()
    return fig


# Columns of the precision-recall grid: 32 classes make 8 rows of 4 panels, each still readable.
PR_COLUMNS = 4


def pr_curves_figure(probs: np.ndarray, labels: np.ndarray, id2label: dict[int, str]) -> Figure:
    """A precision-recall curve per class (scikit-learn), each in its own small panel with its AP in the legend.

    ``probs`` (N, C) float32; ``labels`` (N, C) multi-hot {0, 1}, or (N,) int class ids (one-vs-rest). Many
    classes stay legible as a grid of ``PR_COLUMNS`` panels a row (one axis per class, shared axes limits
    [0, 1]); a class with no positive row gets a panel that says so and no curve.
    """
    ids = sorted(id2label)
    labels = np.asarray(labels)
    if labels.ndim == 1:  # single-label: class c against the rest
        labels = (labels[:, None] == np.asarray(ids)[None, :]).astype(np.int64)
    cols = min(PR_COLUMNS, len(ids))
    rows = math.ceil(len(ids) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.ravel()[len(ids) :]:
        fig.delaxes(ax)  # the grid's unused tail: one axis per class exactly
    for c, (i, ax) in enumerate(zip(ids, axes.ravel(), strict=False)):
        y = labels[:, c]
        ax.set_title(id2label[i], fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        if not y.any():  # no positive: recall is undefined and scikit-learn would warn
            ax.text(0.5, 0.5, "no positive row", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            continue
        precision, recall, _ = precision_recall_curve(y, probs[:, c])
        ap = average_precision_score(y, probs[:, c])
        ax.step(recall, precision, where="post", label=f"AP={ap:.3f}, {int(y.sum())} positive")
        ax.legend(loc="lower left", fontsize=7)
    fig.supxlabel("recall")
    fig.supylabel("precision")
    fig.tight_layout()
    return fig


def regression_figure(pred: np.ndarray, target: np.ndarray) -> Figure:
    """Two panels for ``pred`` (N,) and ``target`` (N,) on the original scale: predicted against true with the
    y = x line, and a histogram of the residuals (pred − true)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    fig, (ax_xy, ax_res) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax_xy.scatter(target, pred, s=8, alpha=0.5)
    both = np.concatenate([pred, target])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    ax_xy.plot([lo, hi], [lo, hi], color="grey", linestyle=":", label="y = x")
    ax_xy.set_xlabel("true")
    ax_xy.set_ylabel("predicted")
    ax_xy.set_title(f"test: predicted vs true (n={target.size})")
    ax_xy.legend(loc="upper left")
    residuals = pred - target
    ax_res.hist(residuals, bins=min(50, max(10, target.size // 10)))
    ax_res.axvline(0, color="grey", linestyle=":")
    ax_res.set_xlabel("residual (predicted − true)")
    ax_res.set_ylabel("rows")
    mean, std = (float(residuals.mean()), float(residuals.std())) if residuals.size else (0.0, 0.0)
    ax_res.set_title(f"residuals: mean {mean:.3g}, std {std:.3g}")
    fig.tight_layout()
    return fig

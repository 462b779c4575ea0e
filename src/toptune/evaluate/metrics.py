"""Test metrics (scikit-learn, scipy): accuracy, macro F1, the per-class report; the multi-label and regression
metrics and reports; a flat dict of any of them, ready to log."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    classification_report,
    f1_score,
    hamming_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, id2label: dict[int, str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support, keyed ready for ``metrics.json``."""
    pred = logits.argmax(-1)
    ids = sorted(id2label)
    names = [id2label[i] for i in ids]
    report = classification_report(labels, pred, labels=ids, target_names=names, output_dict=True, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=ids, average="macro", zero_division=0)),
        "n_examples": int(len(labels)),
        "per_class": {
            n: {k: float(report[n][k]) for k in ("precision", "recall", "f1-score", "support")} for n in names
        },
    }


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``{"accuracy": …, "macro_f1": …, "f1_<class>": …}``: a flat dict ready to log."""
    flat = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    for name, m in metrics["per_class"].items():
        for k, short in (("precision", "precision"), ("recall", "recall"), ("f1-score", "f1")):
            flat[f"{short}_{name}"] = m[k]
    return flat


def report_text(logits: np.ndarray, labels: np.ndarray, id2label: dict[int, str]) -> str:
    """scikit-learn's text classification report."""
    ids = sorted(id2label)
    return classification_report(
        labels, logits.argmax(-1), labels=ids, target_names=[id2label[i] for i in ids], digits=4, zero_division=0
    )


def _multi_hot(probs: np.ndarray, thresholds: list[float] | np.ndarray) -> np.ndarray:
    """(N, C) int 0/1 predictions: ``probs >= thresholds``, one threshold per class broadcast over the rows."""
    return (np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)


def _average_precision(labels: np.ndarray, probs: np.ndarray) -> float:
    """(N,) 0/1 and (N,) scores: scikit-learn's average precision, 0.0 (not NaN and a warning) with no positive."""
    if not np.asarray(labels).any():
        return 0.0
    return float(average_precision_score(labels, probs))


def multilabel_metrics(
    probs: np.ndarray, labels: np.ndarray, thresholds: list[float] | np.ndarray, id2label: dict[int, str]
) -> dict:
    """Micro/macro F1, subset accuracy, Hamming loss and per-class precision/recall/F1/support/AP/threshold.

    ``probs`` (N, C) float32 sigmoid probabilities, ``labels`` (N, C) in {0, 1}, ``thresholds`` C floats
    (a row is predicted positive for class c when ``probs[:, c] >= thresholds[c]``); column c is class
    ``id2label[c]``. Undefined ratios are 0.0 (zero_division=0); with no rows every metric is 0.0.
    """
    ids = sorted(id2label)
    names = [id2label[i] for i in ids]
    labels = np.asarray(labels).astype(np.int64)
    pred = _multi_hot(probs, thresholds)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(ids),))
    n = int(labels.shape[0])
    if n == 0:  # scikit-learn refuses empty arrays: an empty split reports zeros, not an error
        zeros = dict.fromkeys(("precision", "recall", "f1-score", "support", "average_precision"), 0.0)
        return {
            **dict.fromkeys(("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"), 0.0),
            "n_examples": 0,
            "per_class": {name: {**zeros, "threshold": float(thr[c])} for c, name in enumerate(names)},
        }
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, average=None, zero_division=0)
    return {
        "micro_f1": float(f1_score(labels, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(labels, pred)),  # every class of the row right
        "hamming_loss": float(hamming_loss(labels, pred)),  # share of wrong (row, class) entries
        "n_examples": n,
        "per_class": {
            name: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1-score": float(f1[c]),
                "support": float(support[c]),
                "average_precision": _average_precision(labels[:, c], np.asarray(probs)[:, c]),
                "threshold": float(thr[c]),
            }
            for c, name in enumerate(names)
        },
    }


def _correlation(fn: Callable[..., Any], pred: np.ndarray, target: np.ndarray) -> float:
    """scipy's ``spearmanr`` / ``pearsonr`` statistic; 0.0 where it is undefined (fewer than 2 rows, a constant
    side) instead of scipy's NaN and ConstantInputWarning."""
    if pred.size < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return 0.0
    with warnings.catch_warnings():
        # A nearly (not exactly) constant side still warns in scipy; the value it returns is still right.
        warnings.simplefilter("ignore")
        value = float(fn(pred, target).statistic)
    return value if math.isfinite(value) else 0.0


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    """RMSE, MAE, R², Spearman and Pearson correlations of ``pred`` (N,) against ``target`` (N,), both on the
    original scale (after undoing any label normalisation).

    Undefined values are 0.0, never NaN nor a warning: the correlations of a constant side or of fewer than two
    rows, and R² of fewer than two rows; with no rows every metric is 0.0.
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    n = int(target.size)
    if n == 0:
        return {**dict.fromkeys(("rmse", "mae", "r2", "spearman", "pearson"), 0.0), "n_examples": 0}
    return {
        "rmse": float(math.sqrt(mean_squared_error(target, pred))),
        "mae": float(mean_absolute_error(target, pred)),
        # scikit-learn's R² of a constant target is already finite (1.0 if predicted exactly, else 0.0).
        "r2": float(r2_score(target, pred)) if n >= 2 else 0.0,
        "spearman": _correlation(spearmanr, pred, target),
        "pearson": _correlation(pearsonr, pred, target),
        "n_examples": n,
    }


# per-class key → the prefix of its flat name, in the order the flat dict lists them
_PER_CLASS = (
    ("precision", "precision"),
    ("recall", "recall"),
    ("f1-score", "f1"),
    ("average_precision", "average_precision"),
    ("threshold", "threshold"),
)


def flat_metrics_of(metrics: dict) -> dict[str, float]:
    """A flat dict ready to log from any of ``classification_metrics``, ``multilabel_metrics``,
    ``regression_metrics``: every top-level number except ``n_examples``, then per class (when there is
    ``per_class``) ``precision_<class>``, ``recall_<class>``, ``f1_<class>`` and, where present,
    ``average_precision_<class>`` and ``threshold_<class>``. For a single-label dict it equals ``flat_metrics``."""
    flat = {
        k: float(v)
        for k, v in metrics.items()
        if k not in ("n_examples", "per_class") and isinstance(v, int | float) and not isinstance(v, bool)
    }
    for name, m in metrics.get("per_class", {}).items():
        for k, short in _PER_CLASS:
            if k in m:
                flat[f"{short}_{name}"] = float(m[k])
    return flat


def multilabel_report_text(
    probs: np.ndarray, labels: np.ndarray, thresholds: list[float] | np.ndarray, id2label: dict[int, str]
) -> str:
    """scikit-learn's text classification report of the multi-hot predictions ``probs >= thresholds``
    (micro/macro/weighted/samples averages), then one line per class with its threshold and average precision."""
    m = multilabel_metrics(probs, labels, thresholds, id2label)
    names = list(m["per_class"])
    if m["n_examples"] == 0:
        report = "no rows\n"
    else:
        report = classification_report(
            np.asarray(labels).astype(np.int64),
            _multi_hot(probs, thresholds),
            labels=list(range(len(names))),
            target_names=names,
            digits=4,
            zero_division=0,
        )
    width = max([len(n) for n in names] + [len("class")])
    lines = [f"{'class':>{width}}  threshold  average_precision"]
    lines += [f"{n:>{width}}  {c['threshold']:9.4f}  {c['average_precision']:17.4f}" for n, c in m["per_class"].items()]
    return report + "\n" + "\n".join(lines) + "\n"


def regression_report_text(pred: np.ndarray, target: np.ndarray) -> str:
    """The regression metrics as a two-column text table (name, value), one line each."""
    m = regression_metrics(pred, target)
    lines = [f"{'metric':<10}  {'value':>12}"]
    lines += [f"{k:<10}  {v:>12.4f}" for k, v in m.items() if k != "n_examples"]
    lines.append(f"{'n_examples':<10}  {m['n_examples']:>12d}")
    return "\n".join(lines) + "\n"

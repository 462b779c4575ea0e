"""Test metrics (scikit-learn): accuracy, macro F1, the per-class report."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    f1_score,
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

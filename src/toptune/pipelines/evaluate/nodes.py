"""Nodes of the ``evaluate`` pipeline."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from toptune.config import TrainingConfig
from toptune.data.tokens import Encoded
from toptune.evaluate.calibration import expected_calibration_error, reliability_figure
from toptune.evaluate.metrics import (
    classification_metrics,
    flat_metrics_of,
    multilabel_metrics,
    multilabel_report_text,
    regression_metrics,
    regression_report_text,
    report_text,
)
from toptune.evaluate.plots import confusion_figure, pr_curves_figure, regression_figure
from toptune.pipelines.utils import metric_items
from toptune.task import MULTI, REGRESSION, Task
from toptune.train.recipe import Classifier, predict

log = logging.getLogger(__name__)


def evaluate(
    classifier: Classifier, tokenised: dict[str, Encoded], training: TrainingConfig
) -> tuple[dict, dict, str, pd.DataFrame, dict]:
    """Metrics on the test split through the task's decision (calibrated, thresholded, on the target's scale):
    metrics.json, flat MLflow metrics, text report, predictions, and the kind's plots by name."""
    task, test = classifier.task, tokenised["test"]
    ev = predict(classifier, test, training.eval_batch_size)
    ids = test.id_list()
    if task.problem_type == REGRESSION:
        pred = task.values(ev.logits)
        metrics = regression_metrics(pred, ev.labels)
        log.info(
            "test rmse %.4f, r2 %.4f, spearman %.4f on %d rows",
            metrics["rmse"],
            metrics["r2"],
            metrics["spearman"],
            len(test),
        )
        rows = pd.DataFrame({"id": ids, "target": ev.labels, "prediction": pred})
        report, plots = (
            regression_report_text(pred, ev.labels),
            {"predicted_vs_true": regression_figure(pred, ev.labels)},
        )
    else:
        metrics, report, rows, plots = _classification(task, ev.logits, ev.labels, ids)
    return metrics, metric_items(flat_metrics_of(metrics)), report, rows, plots


def _classification(task: Task, logits: np.ndarray, labels: np.ndarray, ids: list[str]):
    """Single- or multi-label test metrics (with ECE before and after calibration), report, rows, plots."""
    kind, names = task.problem_type, task.names()
    raw = dataclasses.replace(task, temperature=1.0).probabilities(logits)  # the model as trained
    probs = task.probabilities(logits)
    if kind == MULTI:
        metrics = multilabel_metrics(probs, labels, task.cutoffs(), task.id2label)
        log.info(
            "test micro-F1 %.4f, macro-F1 %.4f, subset accuracy %.4f on %d rows",
            metrics["micro_f1"],
            metrics["macro_f1"],
            metrics["subset_accuracy"],
            len(labels),
        )
        truth, chosen = task.label_texts(labels.astype(bool)), task.label_texts(task.decisions(probs))
        rows = pd.DataFrame({"id": ids, "labels": truth, "predicted": chosen})
        report = multilabel_report_text(probs, labels, task.cutoffs(), task.id2label)
        plots = {"pr_curves": pr_curves_figure(probs, labels, task.id2label)}
    else:
        metrics = classification_metrics(logits, labels, task.id2label)
        log.info("test accuracy %.4f, macro-F1 %.4f on %d rows", metrics["accuracy"], metrics["macro_f1"], len(labels))
        rows = pd.DataFrame(
            {"id": ids, "label": [names[i] for i in labels], "predicted": [names[i] for i in probs.argmax(-1)]}
        )
        report = report_text(logits, labels, task.id2label)
        plots = {"confusion_matrix": confusion_figure(logits, labels, task.id2label)}
    metrics["ece"] = expected_calibration_error(probs, labels, kind)
    metrics["ece_uncalibrated"] = expected_calibration_error(raw, labels, kind)
    metrics["temperature"] = task.temperature
    plots["reliability"] = reliability_figure(probs, labels, kind, before=raw)
    for c, name in enumerate(names):
        rows[f"prob_{name}"] = probs[:, c]
    return metrics, report, rows, plots

"""Nodes of the ``evaluate`` pipeline."""

from __future__ import annotations

import logging

import pandas as pd

from toptune.config import TrainingConfig
from toptune.data.tokens import Encoded
from toptune.evaluate.metrics import classification_metrics, flat_metrics, report_text
from toptune.evaluate.plots import confusion_figure
from toptune.pipelines.utils import id2label_from_json, metric_items
from toptune.train.recipe import Classifier, predict, softmax

log = logging.getLogger(__name__)


def evaluate(
    classifier: Classifier, tokenised: dict[str, Encoded], label_map: dict[str, str], training: TrainingConfig
) -> tuple[dict, dict, str, pd.DataFrame, object]:
    """Metrics on the test split: metrics.json, flat MLflow metrics, text report, predictions, confusion PNG."""
    id2label, test = id2label_from_json(label_map), tokenised["test"]
    ev = predict(classifier, test, training.eval_batch_size)
    metrics = classification_metrics(ev.logits, ev.labels, id2label)
    log.info("test accuracy %.4f, macro-F1 %.4f on %d examples", metrics["accuracy"], metrics["macro_f1"], len(test))
    probs = softmax(ev.logits)
    preds = pd.DataFrame(
        {
            "id": test.id_list(),
            "label": [id2label[i] for i in ev.labels],
            "predicted": [id2label[i] for i in probs.argmax(-1)],
            **{f"prob_{id2label[c]}": probs[:, c] for c in sorted(id2label)},
        }
    )
    return (
        metrics,
        metric_items(flat_metrics(metrics)),
        report_text(ev.logits, ev.labels, id2label),
        preds,
        confusion_figure(ev.logits, ev.labels, id2label),
    )

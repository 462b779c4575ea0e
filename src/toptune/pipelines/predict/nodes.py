"""Nodes of the ``predict`` pipeline."""

from __future__ import annotations

import logging

import pandas as pd

from toptune.config import PredictConfig
from toptune.pipelines.utils import metric_items
from toptune.serve.predict import load_predictor, prepare_rows

log = logging.getLogger(__name__)


def predict(predict_input, merged_model: str, cfg: PredictConfig) -> tuple[pd.DataFrame, dict]:
    """Serialise each row with the bundle's template, classify in batches; bad rows per ``predict.bad_rows``."""
    predictor = load_predictor(merged_model, cfg.device)
    rows = prepare_rows(predict_input, predictor.serving, cfg.bad_rows)
    if skipped := rows.skipped("predict.bad_rows=drop"):
        log.warning("predict: %s", skipped)
    predictions = predictor.predict(rows, cfg.batch_size, progress=cfg.progress)
    log.info(
        "predict: %d rows in (texts from the %s) → %d predictions",
        rows.counts["rows_in"],
        rows.source,
        len(predictions),
    )
    return predictions, metric_items(rows.counts)

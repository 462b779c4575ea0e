"""Nodes of the ``export`` pipeline."""

from __future__ import annotations

import logging

from toptune import distributed
from toptune.config import DataConfig, ModelConfig, TrainingConfig, from_dict
from toptune.data import Encoded, to_frame
from toptune.export import ExportConfig, MergedCheckpoint, ServingConfig, merge_adapter
from toptune.hooks import TRAINING_RUN_FILE
from toptune.pipelines.utils import id2label_from_json, metric_items
from toptune.recipe import resolve_model_path

from .mlflow_model import log_pyfunc, training_run_id

log = logging.getLogger(__name__)


def merge_model(adapter: str, label_map: dict[str, str], tokenised: dict[str, Encoded], data_params: dict,
                model_params: dict, training_params: dict, export_params: dict) -> tuple[MergedCheckpoint, dict]:
    """Fold the adapter into the base weights; checked against the adapter's logits on test rows."""
    data, model = from_dict(DataConfig, data_params, "data"), from_dict(ModelConfig, model_params, "model")
    training, cfg = from_dict(TrainingConfig, training_params, "training"), from_dict(ExportConfig, export_params, "export")
    serving = ServingConfig(data.text_template, training.max_length, data.id_column, data.label_column)
    check = tokenised["test"].input_ids[: cfg.check_rows]
    merged = merge_adapter(resolve_model_path(model.name_or_path), adapter, id2label_from_json(label_map), serving,
                           check_input_ids=check, atol=cfg.merge_atol)
    log.info("merged adapter %s into %s: %s", adapter, model.name_or_path, merged.check or "not checked")
    return merged, metric_items(merged.check)


def log_model(merged_model: str, raw_data, export_params: dict) -> dict:
    """Log the merged checkpoint as a pyfunc model to the training run (else the export run); register it.
    Under ``torchrun`` rank 0 alone logs (the others return an empty record, kept in memory)."""
    if not distributed.is_main():
        return {}
    cfg = from_dict(ExportConfig, export_params, "export")
    example = to_frame(raw_data).head(cfg.example_rows)
    return log_pyfunc(merged_model, example, cfg, training_run_id(TRAINING_RUN_FILE))

"""Nodes of the ``export`` pipeline: they read the adapter bundle only (not the data pipeline's files)."""

from __future__ import annotations

import logging

from toptune.config import from_dict
from toptune.integrations.mlflow_model import known_run, log_pyfunc
from toptune.pipelines.utils import metric_items
from toptune.serve.bundle import read_bundle, read_examples
from toptune.serve.merge import ExportConfig, MergedCheckpoint, export_bundle
from toptune.train import distributed

log = logging.getLogger(__name__)


def merge_model(adapter: str, export_params: dict) -> tuple[MergedCheckpoint, dict]:
    """Fold the adapter bundle into its base checkpoint; checked against the adapter's logits on the
    bundle's example rows."""
    cfg = from_dict(ExportConfig, export_params, "export")
    merged = export_bundle(adapter, cfg.check_rows, cfg.merge_atol)
    assert merged.bundle is not None  # export_bundle carries the adapter's manifest over
    log.info("merged adapter %s into %s: %s", adapter, merged.bundle.base_model, merged.check or "not checked")
    return merged, metric_items(merged.check)


def log_model(merged_model: str, export_params: dict) -> dict:
    """Log the merged bundle as a pyfunc model to the run that trained it (else the export run); register it.
    Under ``torchrun`` rank 0 alone logs (the others return an empty record, kept in memory)."""
    if not distributed.is_main():
        return {}
    cfg = from_dict(ExportConfig, export_params, "export")
    bundle = read_bundle(merged_model, "merged")
    example = read_examples(merged_model).head(cfg.example_rows)
    return log_pyfunc(merged_model, example, cfg, known_run(bundle.mlflow_run_id))

"""Nodes of the ``export`` pipeline: they read the adapter bundle only (not the data pipeline's files)."""

from __future__ import annotations

import logging

from toptune.config import ExportConfig
from toptune.integrations.mlflow_model import known_run, log_pyfunc
from toptune.pipelines.utils import metric_items
from toptune.serve.bundle import read_bundle, read_examples
from toptune.serve.merge import MergedModel, export_bundle
from toptune.train import distributed

log = logging.getLogger(__name__)


def merge_model(adapter: str, cfg: ExportConfig) -> tuple[MergedModel, dict]:
    """Fold the adapter bundle into its base checkpoint; checked against the adapter's logits on the
    bundle's example rows."""
    merged = export_bundle(adapter, cfg.check_rows, cfg.merge_atol)
    assert merged.bundle is not None  # export_bundle carries the adapter's manifest over
    log.info("merged adapter %s into %s: %s", adapter, merged.bundle.base_model, merged.check or "not checked")
    return merged, metric_items(merged.check)


def log_model(merged_model: str, cfg: ExportConfig) -> dict:
    """Log the merged bundle as a pyfunc model to the run that trained it (else the export run); register it.
    Under ``torchrun`` rank 0 alone logs (the others return an empty record, kept in memory)."""
    if not distributed.is_main():
        return {}
    bundle = read_bundle(merged_model, "merged")
    example = read_examples(merged_model).head(cfg.example_rows)
    return log_pyfunc(merged_model, example, cfg, known_run(bundle.mlflow_run_id))

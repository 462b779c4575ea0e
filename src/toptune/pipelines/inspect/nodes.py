"""Nodes of the ``inspect`` pipeline."""

from __future__ import annotations

import logging

import numpy as np
from matplotlib.figure import Figure

from toptune.config import InspectConfig, LoraSettings, ModelConfig, TrainingConfig
from toptune.data.batches import rows_batch
from toptune.data.tokens import Encoded
from toptune.inspect import (
    block_diagram_figure,
    cache_batch,
    format_seed_table,
    format_table,
    inspect_modes,
    metrics_of,
    saved_bytes_figure,
    seed_table,
)
from toptune.model.tokenizer import load_tokenizer
from toptune.pipelines.utils import id2label_from_json, metric_items
from toptune.train.recipe import resolve_base_checkpoint

log = logging.getLogger(__name__)


def inspect_memory(
    tokenised: dict[str, Encoded],
    label_map: dict[str, str],
    model: ModelConfig,
    lora: LoraSettings,
    training: TrainingConfig,
    icfg: InspectConfig,
) -> tuple[dict, dict, Figure, Figure]:
    """Measure every mode on the first ``inspect.batch_size`` examples of ``inspect.split``; the report,
    its MLflow metrics and the two figures."""
    enc = tokenised[icfg.split]
    n = min(icfg.batch_size, len(enc))
    tok = load_tokenizer(resolve_base_checkpoint(model.name_or_path))
    batch = rows_batch(enc, np.arange(n), tok.pad_token_id)
    report = inspect_modes(
        model,
        lora,
        id2label_from_json(label_map),
        batch,
        training.seed,
        training.device,
        icfg.modes,
        cache_batch(tokenised, training, icfg.split, n),
        icfg.timing_repeats,
        tok,
    )
    report["batch"]["source"] = f"first {n} examples of the {icfg.split} split"
    report["seed_table"] = seed_table()
    report["table"] = format_table(report)
    for line in [*format_seed_table(report["seed_table"]).splitlines(), *report["table"].splitlines()]:
        log.info("inspect | %s", line)  # one record per row: stays a table in any log width
    return report, metric_items(metrics_of(report)), saved_bytes_figure(report), block_diagram_figure(report)

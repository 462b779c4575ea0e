"""Nodes of the ``data`` pipeline."""

from __future__ import annotations

import json
import logging

import pandas as pd

from toptune.config import DataConfig, ModelConfig, TrainingConfig
from toptune.data.table import label_map, prepare_table, split_table, to_frame
from toptune.data.tokens import Encoded, encode_splits
from toptune.model.tokenizer import load_tokenizer
from toptune.pipelines.utils import id2label_from_json, metric_items
from toptune.train.recipe import resolve_base_checkpoint

log = logging.getLogger(__name__)


def prepare(raw_data, data: DataConfig) -> tuple[pd.DataFrame, dict[str, str], dict, list[dict]]:
    """Validate + serialise rows; returns the table (id, text, label), the label map, the row counts
    (every drop under ``dropped_<reason>``) and a few valid raw rows (the model bundle's examples)."""
    prepared = prepare_table(to_frame(raw_data), data)
    dropped = {k: v for k, v in prepared.quality.items() if k.startswith("dropped_") and v}
    log.info(
        "data: %d rows in, %d valid; dropped %s",
        prepared.quality["rows_in"],
        prepared.quality["rows_valid"],
        dropped or "none",
    )
    id2label = label_map(prepared.table["label"])
    assert prepared.examples is not None  # prepare_table always keeps them
    examples = json.loads(prepared.examples.to_json(orient="records"))  # plain JSON types
    return prepared.table, {str(k): v for k, v in id2label.items()}, metric_items(prepared.quality), examples


def tokenise(
    table: pd.DataFrame, label_map_json: dict[str, str], data: DataConfig, model: ModelConfig, training: TrainingConfig
) -> tuple[dict[str, Encoded], dict]:
    """Stratified split, then tokenise each split once with truncation at ``training.max_length``."""
    tokenizer = load_tokenizer(resolve_base_checkpoint(model.name_or_path))
    encoded = encode_splits(
        split_table(table, data, training.seed), tokenizer, training.max_length, id2label_from_json(label_map_json)
    )
    stats = {f"{name}_examples": len(enc) for name, enc in encoded.items()}
    stats.update({f"{name}_truncated": enc.truncated for name, enc in encoded.items()})
    log.info("tokenised: %s", stats)
    return encoded, metric_items(stats)

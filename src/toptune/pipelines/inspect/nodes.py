"""Nodes of the ``inspect`` pipeline."""

from __future__ import annotations

import logging
from pathlib import Path

from toptune.config import RunConfig
from toptune.data import Encoded, collate
from toptune.inspect import block_diagram_figure, format_table, inspect_modes, saved_bytes_figure, seed_table
from toptune.pipelines.utils import id2label_from_json, metric_items
from toptune.recipe import resolve_model_path
from toptune.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def inspect_memory(tokenised: dict[str, Encoded], label_map: dict[str, str], model_params: dict, lora_params: dict,
                   training_params: dict, inspect_params: dict) -> tuple[dict, dict, object, object]:
    """Measure every mode on the first ``inspect.batch_size`` training examples; report, metrics, PNGs."""
    cfg = RunConfig.from_params({"model": model_params, "lora": lora_params, "training": training_params})
    train = tokenised["train"]
    n = min(int(inspect_params.get("batch_size", 8)), len(train))
    pad_id = load_tokenizer(resolve_model_path(cfg.model.name_or_path)).pad_token_id
    batch = collate(train.input_ids[:n], train.labels[:n], pad_id)
    cache_available = Path(cfg.training.cache_dir).is_dir() and any(Path(cfg.training.cache_dir).iterdir())
    report = inspect_modes(cfg.model, cfg.lora, id2label_from_json(label_map), batch, cfg.training.seed,
                           cfg.training.device, tuple(inspect_params.get("modes", ())) or None, cache_available)
    report["seed_table"] = seed_table()
    for line in format_table(report).splitlines():  # one record per row: stays a table in any log width
        log.info("inspect | %s", line)
    totals = {f"{m}.saved_bytes": v["saved_bytes_total"] for m, v in report["modes"].items() if "saved_bytes_total" in v}
    totals.update({f"{m}.autograd_nodes": v["autograd_nodes"] for m, v in report["modes"].items() if "autograd_nodes" in v})
    return report, metric_items(totals), saved_bytes_figure(report), block_diagram_figure(report)

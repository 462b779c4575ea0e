"""Nodes of the ``probe`` pipeline."""

from __future__ import annotations

import logging

from matplotlib.figure import Figure

from toptune.config import DataConfig, ModelConfig, ProbeConfig, TrainingConfig
from toptune.data.tokens import Encoded
from toptune.pipelines.utils import id2label_from_json, metric_items, metric_series
from toptune.probe import probe_figure, run_probe

log = logging.getLogger(__name__)


def probe_by_block(
    tokenised: dict[str, Encoded],
    label_map: dict[str, str],
    data: DataConfig,
    model: ModelConfig,
    training: TrainingConfig,
    probe: ProbeConfig,
) -> tuple[dict, dict, Figure]:
    """Probe every block of the base model on the tokenised train / val splits; the report, its MLflow
    metrics (``probe.<metric>`` by step = block, ``probe.recommended_trainable_layers``, …) and the figure."""
    report = run_probe(model, training, probe, tokenised, id2label_from_json(label_map), data.problem_type)
    for row in report["layers"]:
        log.info(
            "probe | block %2d  %s %.4f  (train %.4f)", row["block"], row["metric"], row["value"], row["train_value"]
        )
    log.info(
        "probe | recommended model.trainable_layers=%d (blocks %d..%d train; %s)",
        report["recommended_trainable_layers"],
        report["num_blocks"] - report["recommended_trainable_layers"],
        report["num_blocks"] - 1,
        report["rule"],
    )
    facts = {k: report[k] for k in ("recommended_trainable_layers", "saturation_block", "best_block", "best_value")}
    name = report["metric"]
    by_block = [{"block": r["block"], name: r["value"], f"train_{name}": r["train_value"]} for r in report["layers"]]
    metrics = {**metric_series(by_block, "block", [name, f"train_{name}"]), **metric_items(facts)}
    return report, metrics, probe_figure(report)

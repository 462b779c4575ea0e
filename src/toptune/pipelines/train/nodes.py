"""Nodes of the ``train`` pipeline."""

from __future__ import annotations

import dataclasses
import logging

from toptune.config import RunConfig
from toptune.data import Encoded
from toptune.pipelines.utils import id2label_from_json, metric_items, metric_series
from toptune.recipe import Classifier, build_classifier, describe, fit
from toptune.train import seed_everything

log = logging.getLogger(__name__)


def train_model(tokenised: dict[str, Encoded], label_map: dict[str, str], model_params: dict, lora_params: dict,
                training_params: dict, prefix_cache: dict) -> tuple[Classifier, object, dict, dict, dict, dict]:
    """Train; returns the classifier (in memory), its PEFT model (saved as the adapter), MLflow metric
    histories (training by step/epoch, validation by epoch, model facts) and the run summary.
    ``prefix_cache`` (the cache node's summary) orders this node after the cache build, whose
    fingerprinted cache ``fit`` then reuses in ``cache`` mode, and says what ``auto`` resolved to."""
    cfg = RunConfig.from_params({"model": model_params, "lora": lora_params, "training": training_params})
    if cfg.training.prefix_mode == "auto":  # decided once, by the cache node (fit decides if it did not)
        cfg.training = dataclasses.replace(cfg.training, prefix_mode=prefix_cache.get("prefix_mode", "auto"))
    seed_everything(cfg.training.seed)
    clf = build_classifier(cfg.model, cfg.lora, id2label_from_json(label_map), cfg.training.seed, cfg.training.device)
    facts = describe(clf)
    log.info("model: %s; prefix_mode=%s on %s", facts, cfg.training.prefix_mode, clf.device)
    result = fit(clf, tokenised, cfg.training)
    train_history = {
        **metric_series(result.steps, "step", ["loss", "lr"]),
        **metric_series(result.epochs, "epoch", ["train_loss", "examples_per_second", "epoch_seconds"], prefix="epoch_"),
        **metric_items({"seconds": result.train_seconds}),
    }
    val_history = metric_series(result.epochs, "epoch", ["val_loss", "val_accuracy"])
    val_history = {k.removeprefix("val_"): v for k, v in val_history.items()}
    model_facts = metric_items({k: v for k, v in facts.items() if isinstance(v, int)})
    summary = {"model": facts, "device": str(clf.device), "prefix_mode": cfg.training.prefix_mode,
               **dataclasses.asdict(result)}
    return clf, clf.model, train_history, val_history, model_facts, summary

"""Nodes of the ``train`` pipeline."""

from __future__ import annotations

import dataclasses
import logging

import mlflow
import pandas as pd
from transformers import set_seed

from toptune.config import DataConfig, LoraSettings, ModelConfig, RunConfig, TrainingConfig
from toptune.data.tokens import Encoded
from toptune.model.lora import trainable_blocks
from toptune.pipelines.utils import id2label_from_json, metric_items, metric_series
from toptune.serve.bundle import Bundle, base_identity, task_fields
from toptune.train import distributed
from toptune.train.objective import calibrate
from toptune.train.recipe import (
    Classifier,
    check_forward_split,
    describe,
    fit,
    predict,
    resolve_base_checkpoint,
    task_classifier,
    training_setup,
)

log = logging.getLogger(__name__)


def train_model(
    tokenised: dict[str, Encoded],
    label_map: dict[str, str],
    data: DataConfig,
    model: ModelConfig,
    lora: LoraSettings,
    training: TrainingConfig,
    prefix_cache: dict,
) -> tuple[Classifier, dict, dict, dict, dict]:
    """Train; returns the classifier (in memory, with the best epoch's weights and its calibrated task: bundled
    as the adapter), MLflow metric histories (training by step/epoch, validation by epoch, model facts) and
    the run summary. Checkpoints go to ``data/06_models/checkpoints/`` with this MLflow run's id beside
    them (``training.checkpoint_every``, ``training.resume``). ``prefix_cache`` (the cache node's
    summary) orders this node after the cache build, whose fingerprinted cache ``fit`` then reuses in
    ``cache`` mode, and says what ``auto`` resolved to (a resumed run keeps its checkpoint's mode)."""
    cfg = RunConfig(data=data, model=model, lora=lora, training=training)  # what the checkpoints are fingerprinted with
    set_seed(cfg.training.seed)
    id2label = id2label_from_json(label_map)
    clf = task_classifier(cfg, tokenised, id2label)
    facts = describe(clf)
    check = check_forward_split(clf, tokenised["train"], cfg.training.batch_size)
    log.info(
        "split check: stock vs split forward max |Δlogit| %.2e on %d examples (tolerance %g)",
        check["max_abs_logit_diff"],
        check["rows"],
        check["tolerance"],
    )
    run = mlflow.active_run()  # rank 0 only: the other processes do not track
    training, checkpoints = training_setup(
        cfg, clf, tokenised, prefix_cache.get("prefix_mode"), run.info.run_id if run else None
    )
    log.info(
        "model: %s; prefix_mode=%s on %s, %d process(es)", facts, training.prefix_mode, clf.device, distributed.world()
    )
    result = fit(clf, tokenised, training, checkpoints)
    if result.best is not None:
        log.info("kept epoch %d: %s", result.best["epoch"], result.best["reason"])
    clf.task, calibration = calibrate(clf.task, predict(clf, tokenised["val"], training.eval_batch_size), training)
    if calibration:
        log.info(
            "calibration on validation: temperature %.3f, ECE %.4f → %.4f, NLL %.4f → %.4f",
            calibration["temperature"],
            calibration["ece_uncalibrated"],
            calibration["ece"],
            calibration["nll_uncalibrated"],
            calibration["nll"],
        )
    train_history = {
        **metric_series(result.steps, "step", ["loss", "lr"]),
        **metric_series(
            result.epochs, "epoch", ["train_loss", "examples_per_second", "epoch_seconds"], prefix="epoch_"
        ),
        **metric_items({"seconds": result.train_seconds}),
    }
    val_keys = sorted({k for row in result.epochs for k in row if k.startswith("val_")})
    val_history = {k.removeprefix("val_"): v for k, v in metric_series(result.epochs, "epoch", val_keys).items()}
    if result.best is not None and result.best["value"] is not None:  # the kept epoch's value, at its epoch
        kept = result.best["epoch"]
        val_history[f"best_{result.best['metric']}"] = [{"value": float(result.best["value"]), "step": kept}]
        val_history.update({k: [v] for k, v in metric_items(calibration, step=kept).items()})
    weights = dict(zip(clf.task.names(), clf.task.class_weights or [], strict=False))
    model_facts = metric_items(
        {
            **{k: v for k, v in facts.items() if isinstance(v, int)},
            **{f"split_check_{k}": v for k, v in check.items() if k != "model_type"},
            **{f"class_weight_{name}": w for name, w in weights.items()},
        }
    )
    summary = {
        "model": facts,
        "device": str(clf.device),
        "processes": distributed.world(),
        "prefix_mode": training.prefix_mode,
        "split_check": check,
        "task": clf.task.to_dict(),
        "calibration": calibration,
        **dataclasses.asdict(result),
    }
    return clf, train_history, val_history, model_facts, summary


def bundle_model(
    classifier: Classifier,
    input_example: list[dict],
    data: DataConfig,
    model: ModelConfig,
    training: TrainingConfig,
) -> dict:
    """The adapter bundle (see ``toptune.serve.bundle``): the trained PEFT model with what defines it (the
    task: labels, problem type, class weights, target scaling, temperature, thresholds; template, token
    limit, base checkpoint and tokenizer hashes, this MLflow run). The catalog stages it; the project hooks
    make it current only when the whole run succeeds."""
    run = mlflow.active_run()
    peft_model, task = classifier.model, classifier.task
    bundle = Bundle(
        kind="adapter",
        id2label=dict(task.id2label),
        **task_fields(task),
        text_template=data.text_template,
        max_length=training.max_length,
        id_column=data.id_column,
        label_column=data.label_column,
        missing_fields=data.missing_fields,
        trainable_layers=sorted(trainable_blocks(peft_model)),
        mlflow_run_id=run.info.run_id if run else None,
        **base_identity(model.name_or_path, resolve_base_checkpoint(model.name_or_path)),
    )
    return {"model": peft_model, "bundle": bundle, "examples": pd.DataFrame(input_example)}

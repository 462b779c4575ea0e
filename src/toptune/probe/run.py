"""The probe of a run: the base classifier loaded as training loads it, each block's pooled vectors of the train
and validation splits (:mod:`toptune.probe.pooled`), a linear probe per block and the K it recommends
(:mod:`toptune.probe.fit`), as one report (``data/08_reporting/probe.json``)."""

from __future__ import annotations

import time

import numpy as np
from torch import nn

from toptune.config import ModelConfig, ProbeConfig, TrainingConfig
from toptune.data.tokens import Encoded
from toptune.model.load import load_classifier
from toptune.model.precision import resolve_dtype
from toptune.model.tokenizer import load_tokenizer
from toptune.probe.fit import RULE, probe_blocks, recommend
from toptune.probe.pooled import pooled_by_block, probe_rows
from toptune.train.device import resolve_device
from toptune.train.objective import stored_labels
from toptune.train.recipe import resolve_base_checkpoint

SPLITS = ("train", "val")
"""The probe is fitted on the first split and scored on the second."""


def base_model(model: ModelConfig, training: TrainingConfig, id2label: dict[int, str], problem_type: str) -> nn.Module:
    """The base checkpoint as a classifier (no adapters: the probe reads the frozen weights), on the run's
    device and in the run's dtype."""
    path = resolve_base_checkpoint(model.name_or_path)
    device = resolve_device(training.device)
    pad = load_tokenizer(path).pad_token_id
    clf: nn.Module = load_classifier(
        path, id2label, pad, training.seed, resolve_dtype(model.dtype, device), problem_type
    )
    return clf.to(device)


def run_probe(
    model: ModelConfig,
    training: TrainingConfig,
    cfg: ProbeConfig,
    tokenised: dict[str, Encoded],
    id2label: dict[int, str],
    problem_type: str,
) -> dict:
    """The probe's report: ``layers`` (one ``{block, metric, value, train_value, converged}`` per block),
    ``recommended_trainable_layers`` (:func:`toptune.probe.fit.recommend`), the rule, sizes and seconds."""
    started = time.perf_counter()
    clf = base_model(model, training, id2label, problem_type)
    device = next(clf.parameters()).device
    data = {}
    for split in SPLITS:
        enc = tokenised[split]
        rows = probe_rows(len(enc), cfg.max_rows, training.seed)
        x = pooled_by_block(clf, enc, rows, cfg.batch_size, device, training.progress, f"probe {split}")
        data[split] = (x, stored_labels(enc, problem_type)[rows])  # (rows, blocks, hidden), labels
    pooled_at = time.perf_counter()
    layers = probe_blocks(problem_type, cfg, data["train"], data["val"], training.progress)
    saturated, k = recommend([row["value"] for row in layers], cfg.tolerance)
    best = int(np.argmax([row["value"] for row in layers]))
    train_x = data["train"][0]
    return {
        "layers": layers,
        "recommended_trainable_layers": k,
        "saturation_block": saturated,
        "best_block": best,
        "best_value": layers[best]["value"],
        "metric": layers[best]["metric"],
        "tolerance": cfg.tolerance,
        "rule": RULE,
        "problem_type": problem_type,
        "model": model.name_or_path,
        "num_blocks": train_x.shape[1],
        "hidden_size": train_x.shape[2],
        "rows": {split: len(data[split][1]) for split in SPLITS},
        "pooled_bytes": sum(data[split][0].nbytes for split in SPLITS),
        "seconds": {"pooled": pooled_at - started, "fits": time.perf_counter() - pooled_at},
    }

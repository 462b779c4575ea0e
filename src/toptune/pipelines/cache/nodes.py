"""Nodes of the ``cache`` pipeline."""

from __future__ import annotations

import logging

from transformers import set_seed

from toptune.cache import (
    bucketing_padding,
    human_bytes,
    prepare_cache,
    resolve_prefix_mode,
)
from toptune.config import LoraSettings, ModelConfig, TrainingConfig
from toptune.data.tokens import Encoded
from toptune.pipelines.utils import id2label_from_json, metric_items
from toptune.train.recipe import build_classifier, check_forward_split

log = logging.getLogger(__name__)


def build_prefix_cache(
    tokenised: dict[str, Encoded],
    label_map: dict[str, str],
    model: ModelConfig,
    lora: LoraSettings,
    training: TrainingConfig,
) -> tuple[dict, dict]:
    """Resolve ``training.prefix_mode: auto`` (measure, decide: cache or no_grad) and, in cache mode,
    build the prefix cache at ``training.cache_dir`` (or reuse it when its fingerprint matches).
    Returns the summary (``prefix_mode`` as resolved, and for ``auto`` why, with the two measured
    rates; the cache's path, status, bytes, build seconds, fingerprint) and metrics (the rates,
    ``used``, bytes, reuse, build seconds, the train batches' padding share without and with length
    bucketing). Nothing to do for ``no_grad`` / ``autograd``."""
    if training.prefix_mode not in ("auto", "cache"):
        return {"status": "skipped", "prefix_mode": training.prefix_mode}, {}
    set_seed(training.seed)
    clf = build_classifier(model, lora, id2label_from_json(label_map), training.seed, training.device)
    # before any cache is built: stops a run whose model cannot split
    check_forward_split(clf, tokenised["train"], training.batch_size)
    training, choice = resolve_prefix_mode(clf, tokenised, training)  # auto decided
    summary = {"prefix_mode": training.prefix_mode}
    metrics: dict[str, float] = {"used": int(training.prefix_mode == "cache")}
    if choice is not None:
        summary.update(choice.summary())
        metrics.update(
            compute_tokens_per_second=choice.compute_tokens_per_second,
            read_tokens_per_second=choice.read_tokens_per_second,
        )
    if "train" in tokenised and len(tokenised["train"]):  # what length bucketing saves (or would save)
        metrics.update(bucketing_padding(tokenised["train"].lengths(), training.batch_size, training.seed))
    if training.prefix_mode != "cache":
        return {**summary, "status": "skipped"}, metric_items(metrics)
    cache = prepare_cache(clf, tokenised, training)
    summary.update(cache.summary())
    log.info(
        "prefix cache %s at %s: %s on disk%s",
        cache.status,
        cache.path,
        human_bytes(cache.bytes),
        f", built in {cache.build_seconds:.1f} s" if cache.build_seconds is not None else " (fingerprint matches)",
    )
    metrics.update(bytes=cache.bytes, reused=int(cache.status == "reused"), resumed_shards=cache.resumed_shards)
    if cache.build_seconds is not None:
        metrics["build_seconds"] = cache.build_seconds
    return summary, metric_items(metrics)

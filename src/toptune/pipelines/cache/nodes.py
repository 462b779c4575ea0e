"""Nodes of the ``cache`` pipeline."""

from __future__ import annotations

import logging

from toptune import distributed
from toptune.cache import bucketing_padding, human_bytes, prepare_cache
from toptune.config import RunConfig
from toptune.data import Encoded
from toptune.pipelines.utils import id2label_from_json, metric_items
from toptune.recipe import build_classifier, check_split
from toptune.train import seed_everything

log = logging.getLogger(__name__)


def build_prefix_cache(tokenised: dict[str, Encoded], label_map: dict[str, str], model_params: dict,
                       lora_params: dict, training_params: dict) -> tuple[dict, dict]:
    """Build the prefix cache at ``training.cache_dir`` (or reuse it when its fingerprint matches);
    returns its summary (path, status, bytes, build seconds, fingerprint) and metrics (bytes, reuse,
    build seconds, the train batches' padding share without and with length bucketing). A no-op
    unless ``training.prefix_mode`` is ``cache``."""
    cfg = RunConfig.from_params({"model": model_params, "lora": lora_params, "training": training_params})
    if cfg.training.prefix_mode != "cache":
        return {"status": "skipped", "prefix_mode": cfg.training.prefix_mode}, {}
    seed_everything(cfg.training.seed)
    clf = build_classifier(cfg.model, cfg.lora, id2label_from_json(label_map), cfg.training.seed, cfg.training.device)
    check_split(clf, tokenised["train"], cfg.training.batch_size)  # before the cache is built: stops a run that cannot split
    # Under torchrun: rank 0 builds (or checks) it, then the others reuse it; on a machine-local disk each
    # machine's first process builds that machine's copy (distributed.in_turn).
    cache = distributed.in_turn(lambda: prepare_cache(clf, tokenised, cfg.training))
    summary = cache.summary()
    log.info("prefix cache %s at %s: %s on disk%s", cache.status, cache.path, human_bytes(cache.bytes),
             f", built in {cache.build_seconds:.1f} s" if cache.build_seconds is not None else " (fingerprint matches)")
    metrics = {"bytes": cache.bytes, "reused": int(cache.status == "reused")}
    if "train" in tokenised and len(tokenised["train"]):  # what length bucketing saves (or would save)
        metrics.update(bucketing_padding(tokenised["train"].lengths(), cfg.training.batch_size, cfg.training.seed))
    if cache.build_seconds is not None:
        metrics["build_seconds"] = cache.build_seconds
    return summary, metric_items(metrics)

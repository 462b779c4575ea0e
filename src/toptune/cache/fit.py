"""Training and prediction on the cache: the same loop as the live modes, fed from stored states.

    build  : embed → blocks[0:F]  once per example                 → training.cache_dir
    epochs : cache → blocks[F:L-1] → last block at the pooled token → norm → score

(F = ``first_trainable_block``, L blocks.)

On CUDA the prefix's weights leave the device for the cached epochs (they are never used there).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from toptune.cache.batches import bucketing_padding, cached_batches
from toptune.cache.build import prepare_cache
from toptune.cache.forward import cached_logits
from toptune.cache.read import PrefixCache
from toptune.cache.store import human_bytes
from toptune.config import TrainingConfig
from toptune.data.tokens import Encoded
from toptune.model.load import backbone
from toptune.train.batches import eval_split
from toptune.train.checkpoint.resume import Checkpoints
from toptune.train.history import EvalResult
from toptune.train.loop import TrainResult, train
from toptune.train.objective import Objective

log = logging.getLogger(__name__)


def prefix_modules(clf, stop: int | None = None) -> list[nn.Module]:
    """The modules only the prefix up to block ``stop`` (default: the first trainable block) uses: the token
    embedding and blocks ``0 … stop-1``."""
    inner = backbone(clf.model)
    stop = clf.first_trainable_block if stop is None else stop
    return [inner.embed_tokens, *[inner.layers[i] for i in range(stop)]]


def prefix_bytes(clf, stop: int | None = None) -> int:
    """Bytes of the prefix's weights (what cached epochs need not keep on the accelerator)."""
    seen, n = set(), 0
    for m in prefix_modules(clf, stop):
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel() * p.element_size()
    return n


@contextlib.contextmanager
def prefix_offloaded(clf, stop: int | None = None):
    """On CUDA, move the weights of the prefix up to block ``stop`` (the cache's block) to the CPU for the
    duration (the cached epochs never touch them) and back afterwards, so prediction and export see the
    whole model on the device again."""
    if clf.device.type != "cuda":
        yield 0
        return
    modules = prefix_modules(clf, stop)
    # Into pinned host memory with non-blocking copies: for a 4B model's 6.7 GiB prefix, ~0.5 s each way
    # where ``module.to("cpu")`` (pageable memory) took ~5 s.
    for m in modules:
        m._apply(lambda t: torch.empty_like(t, device="cpu", pin_memory=True).copy_(t, non_blocking=True))
    torch.cuda.synchronize(clf.device)
    torch.cuda.empty_cache()
    try:
        yield prefix_bytes(clf, stop)
    finally:
        for m in modules:
            m._apply(lambda t: t.to(clf.device, non_blocking=True))
        torch.cuda.synchronize(clf.device)


def fit_cached(
    clf,
    data: dict[str, Encoded],
    cfg: TrainingConfig,
    cache: PrefixCache | None = None,
    cache_dir: str | Path | None = None,
    checkpoints: Checkpoints | None = None,
    objective: Objective | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train on ``data['train']`` from the prefix cache (built or reused first), validating on the
    cached ``data['val']`` each epoch; same loop, optimiser and schedule as the live modes.

    With ``training.bucket_by_length`` batches hold examples of similar length (less padding);
    without it, batches are exactly the live modes' (same seed → same order → same losses).
    """
    cache = cache or prepare_cache(clf, data, cfg, cache_dir)
    train_split = cache.split("train", data["train"])
    train_b = cached_batches(train_split, cfg.batch_size, True, cfg.seed, cfg.bucket_by_length, clf.device)
    val_b = None
    if "val" in data and len(data["val"]):
        val_split = cache.split("val", data["val"])
        val_b = cached_batches(val_split, cfg.eval_batch_size, False, 0, cfg.bucket_by_length, clf.device)
    if cfg.bucket_by_length:
        pad = bucketing_padding(train_split.lengths, cfg.batch_size, cfg.seed)
        log.info(
            "length bucketing: padding %.1f%% → %.1f%% of the train batches' positions",
            100 * pad["padding_fraction_unbucketed"],
            100 * pad["padding_fraction_bucketed"],
        )
    if cache.block < clf.first_trainable_block:
        log.info(
            "training blocks %d… on the cache of the states entering block %d: blocks %d…%d run frozen (no_grad)",
            clf.first_trainable_block,
            cache.block,
            cache.block,
            clf.first_trainable_block - 1,
        )
    with prefix_offloaded(clf, cache.block) as freed:
        if freed:
            log.info("prefix weights (%s) moved off %s for the cached epochs", human_bytes(freed), clf.device)
        logits_fn = cached_logits(clf.model, clf.first_trainable_block, cache.block)
        return train(clf.model, train_b, logits_fn, cfg, clf.device, val_b, checkpoints, objective, on_epoch)


def predict_cached(
    clf, cache: PrefixCache, name: str, enc: Encoded, batch_size: int, bucket: bool = True
) -> EvalResult:
    """Logits of every example of split ``name`` from the cache, in the split's order (under torchrun the
    processes split the batches and every one gets all the logits)."""
    split = cache.split(name, enc)
    with prefix_offloaded(clf, cache.block):
        return eval_split(
            clf.model,
            cached_batches(split, batch_size, False, 0, bucket, clf.device),
            cached_logits(clf.model, clf.first_trainable_block, cache.block),
            clf.device,
        )

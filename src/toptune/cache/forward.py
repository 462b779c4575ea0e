"""The one place the cache reaches into the forward split: the prefix that fills the cache, the
pooling rule it stores, and the top blocks that train on it."""

from __future__ import annotations

from torch import nn

from toptune.prefix.forward import pool_index, run_prefix, run_top
from toptune.train.batches import LogitsFn

__all__ = ["cached_logits", "pool_index", "run_prefix"]


def cached_logits(model: nn.Module, first_trainable_block: int) -> LogitsFn:
    """Logits of cached batches: blocks ``first_trainable_block …`` (the fast path where the family has
    one: fused, the last at the pooled token only), norm, score at the pooled token."""
    return lambda b: run_top(model, b["hidden"], b["attention_mask"], b["pooled"], first_trainable_block, fast=True)

"""The one place the cache reaches into the model split: the prefix that fills the cache, the
pooling rule it stores, and the top blocks that train on it."""

from __future__ import annotations

from torch import nn

from toptune.prefix import pool_index, run_prefix, run_suffix
from toptune.train import LogitsFn

__all__ = ["cached_logits", "pool_index", "run_prefix"]


def cached_logits(model: nn.Module, first: int) -> LogitsFn:
    """Logits of cached batches: blocks ``first …`` (fused; the last at the pooled token only), norm, score."""
    return lambda b: run_suffix(model, b["hidden"], b["attention_mask"], b["pooled"], first,
                                pooled_last_block=True, fused=True)

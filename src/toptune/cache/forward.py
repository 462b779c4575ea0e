"""The one place the cache reaches into the forward split: the prefix that fills the cache, the
pooling rule it stores, and the top blocks that train on it."""

from __future__ import annotations

from torch import Tensor, nn

from toptune.prefix.forward import pool_index, run_between, run_prefix, run_top
from toptune.train.batches import LogitsFn

__all__ = ["cached_logits", "pool_index", "run_prefix"]


def cached_logits(model: nn.Module, first_trainable_block: int, stored_block: int | None = None) -> LogitsFn:
    """Logits of cached batches holding the states entering ``stored_block`` (default: the first trainable
    block): the frozen blocks between under ``no_grad``, then blocks ``first_trainable_block …`` (the fast
    path where the family has one: fused, the last at the pooled token only), norm, score at the pooled token."""
    start = first_trainable_block if stored_block is None else stored_block

    def logits(b: dict) -> Tensor:
        mask = b.get("attention_mask")  # (B, T); None: nothing is padded (CachedSplit.to_device)
        hidden = run_between(model, b["hidden"], mask, start, first_trainable_block)  # (B, T, D)
        return run_top(model, hidden, mask, b["pooled"], first_trainable_block, fast=True)

    return logits

"""Prefix cache: the frozen prefix's output, computed once, streamed to disk, read through memory maps.

With the prefix frozen and deterministic (eval mode, no dropout), the hidden states entering block
``first_trainable_block`` never change for a given example, so ``training.prefix_mode: cache`` computes them once
over every split and trains the top K blocks on batches re-padded from the store. Stored per
example: the *unpadded* hidden states (length, D). Under right padding a real token never attends
to a padding token, so its state does not depend on the batch it was computed in, and re-padding
from the store gives the live path's values.

Along the data's way:

    fingerprint.py   what the stored values depend on (a cache is used only for an equal fingerprint)
    plan.py          the build as independent shard jobs (split, shard → examples, in build order)
    build.py         the build: clean up, resume complete shards, check the disk, the jobs, manifest last
    shard.py         one shard job: the prefix over its examples, each batch streamed to disk by a writer thread
    store.py         the layout on disk: receipts, clean-up, manifest, validation
    shelf.py         ``training.cache_dir``: one cache per fingerprint side by side, use, eviction
    read.py          a complete cache: manifest, memory-mapped shards, one split at a time
    batches.py       batch order (live order or length-bucketed), gather, prefetch thread
    fit.py           train and predict on the cache
    auto.py          ``prefix_mode: auto``: does the cache pay on this machine?
    forward.py       the one place the cache calls the forward split
"""

from toptune.cache.auto import PrefixModeChoice, choose_prefix_mode, resolve_prefix_mode
from toptune.cache.batches import (
    CachedSplit,
    bucketed_indices,
    bucketing_padding,
    cached_batches,
    epoch_indices,
    padding_fraction,
    prefetched,
)
from toptune.cache.build import (
    BuildReport,
    build_cache,
    build_shards,
    disk_free,
    finish_cache,
    prepare_cache,
)
from toptune.cache.fingerprint import fingerprint, fingerprint_diff, storage_dtype
from toptune.cache.fit import (
    fit_cached,
    predict_cached,
    prefix_bytes,
    prefix_modules,
    prefix_offloaded,
)
from toptune.cache.forward import cached_logits
from toptune.cache.plan import SHARD_BYTES, ShardJob, jobs_of_rank, plan_shards
from toptune.cache.read import PrefixCache, load_cache
from toptune.cache.shelf import cache_path, evict, shelved
from toptune.cache.store import CacheDiskFull, CacheInvalid, human_bytes

__all__ = [
    "BuildReport",
    "CacheDiskFull",
    "CacheInvalid",
    "CachedSplit",
    "PrefixCache",
    "PrefixModeChoice",
    "SHARD_BYTES",
    "ShardJob",
    "bucketed_indices",
    "bucketing_padding",
    "build_cache",
    "build_shards",
    "cache_path",
    "cached_batches",
    "cached_logits",
    "choose_prefix_mode",
    "disk_free",
    "epoch_indices",
    "evict",
    "finish_cache",
    "fingerprint",
    "fingerprint_diff",
    "fit_cached",
    "human_bytes",
    "jobs_of_rank",
    "load_cache",
    "padding_fraction",
    "plan_shards",
    "predict_cached",
    "prefetched",
    "prefix_bytes",
    "prefix_modules",
    "prefix_offloaded",
    "prepare_cache",
    "resolve_prefix_mode",
    "shelved",
    "storage_dtype",
]

"""``training.prefix_mode: auto``: the cache when it pays on this machine, else ``no_grad``.

The cache pays when (1) there is more than one epoch (a cache computed once and read once saves
nothing), (2) the disk holds it, and (3) reading a batch's states from the disk is faster than
computing them. Both rates are measured once, before training, in tokens per second: the
prefix's compute rate on a few real train batches (as ``no_grad`` training runs them: shuffled,
padded; real tokens counted), and the disk's read rate of a freshly written sample of cache
bytes in the cache's directory, its pages dropped from the page cache first (fsync, then
``POSIX_FADV_DONTNEED``) so it is read from the device, through a memory map as training reads.
A fast GPU next to a slow disk can make recomputing the cheaper way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toptune.cache.build import disk_free, row_bytes
from toptune.cache.forward import run_prefix
from toptune.cache.plan import plan_shards, shard_bytes_of
from toptune.cache.shelf import shelved
from toptune.cache.store import human_bytes
from toptune.config import TrainingConfig
from toptune.data.batches import batch_indices, rows_batch
from toptune.data.tokens import Encoded
from toptune.io.atomic import temp_path
from toptune.train import distributed
from toptune.train.device import autocast

log = logging.getLogger(__name__)

PROBE_BATCHES = 3
"""Train batches timed for the compute rate (after one untimed warm-up batch)."""
PROBE_BYTES = 32 << 20
"""Bytes written and read back for the disk's read rate."""
_CHUNK = 4 << 20


@dataclass
class PrefixModeChoice:
    """What ``auto`` chose, why, and the measurements behind it."""

    mode: str
    """``cache`` or ``no_grad``."""
    reason: str
    """One sentence: the rule that decided."""
    compute_tokens_per_second: float
    """Tokens per second the prefix computes on real train batches (padding not counted)."""
    read_tokens_per_second: float
    """Tokens per second of cached states read from the disk, page cache dropped (0 = not measured)."""
    cache_bytes: int
    """Estimated size of the cache on disk."""
    free_bytes: int
    """Bytes free for the cache: free space plus an existing cache's files (reused or replaced)."""

    def summary(self) -> dict:
        return {"prefix_mode": self.mode, "prefix_mode_reason": self.reason, **dataclasses.asdict(self)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def compute_rate(clf, enc: Encoded, batch_size: int, seed: int, batches: int = PROBE_BATCHES) -> float:
    """Real tokens per second the prefix computes on the first shuffled train batches (one warm-up)."""
    idx = batch_indices(len(enc), batch_size, True, seed)[: batches + 1]
    idx = idx if len(idx) > 1 else idx * 2  # a single batch: warm up on it, then time it
    was_training, tokens, seconds = clf.model.training, 0, 0.0
    clf.model.eval()
    try:
        for k, i in enumerate(idx):
            b = rows_batch(enc, i, clf.pad_token_id)
            ids, mask = b["input_ids"].to(clf.device), b["attention_mask"].to(clf.device)
            _sync(clf.device)
            t = time.perf_counter()
            with autocast(clf.device):
                run_prefix(clf.model, ids, mask, clf.first_trainable_block)  # (B, T, D)
            _sync(clf.device)
            if k:
                tokens, seconds = tokens + int(mask.sum()), seconds + time.perf_counter() - t
    finally:
        clf.model.train(was_training)
    return tokens / seconds if seconds > 0 else float("inf")


def read_rate(directory: Path, nbytes: int = PROBE_BYTES) -> float:
    """Bytes per second read back, through a memory map, from a file of ``nbytes`` just written to
    ``directory`` and dropped from the page cache (where the OS allows it)."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = temp_path(directory / ".read-probe")
    chunk = np.random.default_rng(0).integers(0, 256, size=_CHUNK, dtype=np.uint8)  # incompressible
    try:
        with open(probe, "wb") as f:
            for _ in range(max(nbytes // _CHUNK, 1)):
                f.write(chunk.data)  # the array's buffer, no copy
            f.flush()
            os.fsync(f.fileno())
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        t = time.perf_counter()
        mapped = np.memmap(probe, dtype=np.uint8, mode="r")
        for i in range(0, len(mapped), _CHUNK):
            np.copyto(chunk[: len(mapped[i : i + _CHUNK])], mapped[i : i + _CHUNK])
        seconds = time.perf_counter() - t
        n = len(mapped)
        del mapped
    finally:
        probe.unlink(missing_ok=True)
    return n / seconds if seconds > 0 else float("inf")


def choose_prefix_mode(
    clf, data: dict[str, Encoded], cfg: TrainingConfig, path: str | Path | None = None, free_bytes=disk_free
) -> PrefixModeChoice:
    """Measure both rates and apply the three rules (see the module docstring); logs the choice."""
    directory = Path(path or cfg.cache_dir)
    rb = row_bytes(clf, cfg)
    need = sum(shard_bytes_of(j, rb) for j in plan_shards(data, rb))
    directory.mkdir(parents=True, exist_ok=True)
    free = free_bytes(directory) + sum(c.bytes for c in shelved(directory))  # old caches give way
    compute = compute_rate(clf, data["train"], cfg.batch_size, cfg.seed)
    read = read_rate(directory) / rb if free_bytes(directory) > 2 * PROBE_BYTES else 0.0
    rates = f"the prefix computes {compute:,.0f} tokens/s, the disk reads {read:,.0f} tokens/s of cache"
    if cfg.epochs <= 1:
        mode, why = "no_grad", f"1 epoch: a cache would be computed once and read once ({rates})"
    elif need > free:
        mode, why = (
            "no_grad",
            f"the cache needs {human_bytes(need)}, {directory} has {human_bytes(free)} free ({rates})",
        )
    elif read <= compute:
        mode, why = "no_grad", f"recomputing is faster than reading: {rates}"
    else:
        mode, why = "cache", f"reading is {read / compute:.1f}x faster than computing over {cfg.epochs} epochs: {rates}"
    log.info("training.prefix_mode auto → %s: %s", mode, why)
    return PrefixModeChoice(mode, why, compute, read, need, free)


def resolve_prefix_mode(
    clf, data: dict[str, Encoded], cfg: TrainingConfig, path: str | Path | None = None
) -> tuple[TrainingConfig, PrefixModeChoice | None]:
    """``cfg`` with ``prefix_mode: auto`` resolved (and the choice); any other mode as given (and None).
    Under torchrun rank 0 measures and decides, and every process takes its choice (processes that
    measured for themselves could choose differently, and would then walk different batches)."""
    if cfg.prefix_mode != "auto":
        return cfg, None
    choice = distributed.broadcast(choose_prefix_mode(clf, data, cfg, path) if distributed.is_main() else None)
    return dataclasses.replace(cfg, prefix_mode=choice.mode), choice

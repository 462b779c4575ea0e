"""Building the cache: the prefix run once per example, streamed to disk shard by shard.

Each shard job (:mod:`toptune.cache.plan`) runs the prefix (eval mode, ``no_grad``) over its
examples in length-sorted batches and appends each batch's real rows to the shard's temporary file
as it comes (:mod:`toptune.cache.shard`): host memory holds a few batches, never a shard or a split.
A build first removes what cannot be used (another fingerprint's shards, temp files of dead
processes), keeps the complete shards of an interrupted build of the same fingerprint, checks
that the disk holds the rest, builds the missing shards, and then (one step, once) writes the
manifest that makes the cache usable.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from toptune.cache.fingerprint import fingerprint, fingerprint_key, storage_dtype
from toptune.cache.plan import (
    SHARD_BYTES,
    ShardJob,
    jobs_of_rank,
    plan_shards,
    shard_bytes_of,
)
from toptune.cache.read import PrefixCache, load_cache
from toptune.cache.shard import BUILD_BATCH_TOKENS, ShardWriter, build_shard
from toptune.cache.shelf import cache_path, clear_old_layout, deeper_cache, evict, mark_used
from toptune.cache.store import (
    MANIFEST,
    CacheDiskFull,
    CacheInvalid,
    human_bytes,
    read_receipt,
    remove_cache,
    remove_leftovers,
    write_manifest,
)
from toptune.config import TrainingConfig
from toptune.data.tokens import Encoded
from toptune.model.load import backbone
from toptune.model.precision import weights_dtype
from toptune.train import distributed

log = logging.getLogger(__name__)


def disk_free(directory: Path) -> int:
    """Bytes free for an unprivileged writer on the file system holding ``directory``."""
    return shutil.disk_usage(directory).free


def row_bytes(clf, cfg: TrainingConfig) -> int:
    """Bytes of one token's stored state: D × the storage dtype's size."""
    return backbone(clf.model).config.hidden_size * storage_dtype(cfg, clf.model).itemsize


@dataclass
class BuildReport:
    """What one process's build did."""

    built: int
    """Shards computed and written by this call."""
    resumed: int
    """Shards already complete on disk (an interrupted build of the same fingerprint), kept."""
    bytes_needed: int
    """Bytes the missing shards take."""


def build_shards(
    clf,
    data: dict[str, Encoded],
    cfg: TrainingConfig,
    path: str | Path,
    fp: dict,
    plan: list[ShardJob],
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
    free_bytes: Callable[[Path], int] = disk_free,
) -> BuildReport:
    """Build the jobs ``{i : i % world == rank}`` of ``plan`` into ``path`` (resuming complete ones);
    refuse with :class:`CacheDiskFull` when the disk cannot hold what is missing. Writes no manifest:
    that is :func:`finish_cache`'s step, once every process is done."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # being (re)built: no manifest until complete
    key, dtype, rb = fingerprint_key(fp), storage_dtype(cfg, clf.model), row_bytes(clf, cfg)
    removed = remove_leftovers(directory, key, plan)
    if removed:
        log.info(
            "prefix cache at %s: removed %d file(s) no build can use (%s)",
            directory,
            len(removed),
            ", ".join(removed[:3]) + (", …" if len(removed) > 3 else ""),
        )
    mine = {job.name for job in jobs_of_rank(plan, rank, world)}
    complete = {j.name for j in plan if read_receipt(directory, j, key, verify=j.name in mine) is not None}
    total = sum(shard_bytes_of(j, rb) for j in plan)
    needed = sum(shard_bytes_of(j, rb) for j in plan if j.name not in complete)
    tokens = sum(j.tokens for j in plan)
    free = free_bytes(directory)
    log.info(
        "prefix cache at %s: %d tokens × %d bytes (D=%d, %s) = %s in %d shards; %s to write, %s free",
        directory,
        tokens,
        rb,
        rb // dtype.itemsize,
        str(dtype).removeprefix("torch."),
        human_bytes(total),
        len(plan),
        human_bytes(needed),
        human_bytes(free),
    )
    if needed > free:
        raise CacheDiskFull(
            f"prefix cache at {directory} needs {needed} bytes ({human_bytes(needed)}) more, "
            f"the disk has {free} bytes ({human_bytes(free)}) free"
        )
    todo = [j for j in plan if j.name in mine and j.name not in complete]
    report = BuildReport(0, len(mine & complete), needed)
    if report.resumed:
        log.info(
            "prefix cache at %s: resuming, %d of %d shard(s) already complete", directory, report.resumed, len(mine)
        )
    batch_tokens = BUILD_BATCH_TOKENS.get(clf.device.type, 8192)
    lengths = {split: data[split].lengths() for split in {j.split for j in todo}}  # (N,) each, once
    was_training = clf.model.training
    clf.model.eval()  # deterministic prefix: no dropout anywhere
    writer = ShardWriter(clf.device)
    try:
        with tqdm(
            total=sum(len(j.examples) for j in todo),
            desc="prefix cache",
            unit="ex",
            disable=not progress,
            mininterval=1.0,
        ) as bar:
            for job in todo:
                bar.set_postfix(shard=job.name)
                block = fp["first_trainable_block"]
                build_shard(
                    clf,
                    data[job.split],
                    lengths[job.split],
                    job,
                    directory,
                    dtype,
                    key,
                    batch_tokens,
                    writer,
                    bar.update,
                    block,
                )
                report.built += 1
    finally:
        clf.model.train(was_training)
        writer.close()  # every queued shard committed (or, after an error, its temporary file removed)
    return report


def finish_cache(
    clf, cfg: TrainingConfig, path: str | Path, fp: dict, plan: list[ShardJob], build_seconds: float
) -> dict:
    """Write the manifest (once every shard of ``plan`` is complete); returns it."""
    meta = {
        "dtype": str(storage_dtype(cfg, clf.model)).removeprefix("torch."),
        "compute_dtype": str(weights_dtype(clf.model)).removeprefix("torch."),
        "hidden_size": backbone(clf.model).config.hidden_size,
        "build_seconds": build_seconds,
        "built_at": time.time(),
    }
    return write_manifest(Path(path), fp, plan, meta)


def build_cache(
    clf,
    data: dict[str, Encoded],
    cfg: TrainingConfig,
    path: str | Path,
    fp: dict | None = None,
    progress: bool = True,
    reason: str = "no cache",
    shard_bytes: int = SHARD_BYTES,
    free_bytes: Callable[[Path], int] = disk_free,
) -> PrefixCache:
    """Build (or finish) the cache at ``path``: every shard job, then the manifest.

    Under torchrun every process builds its share of the jobs (``i % world == rank``) into the one
    directory, rank 0 writes the manifest once all are done, and every process reads it. Where a
    process cannot read it (machine-local disks: each machine holds only its processes' shards), each
    machine's first process then completes its own copy (:func:`toptune.train.distributed.in_turn`).
    """
    t0 = time.perf_counter()
    fp = fp or fingerprint(clf, data, cfg)
    plan = plan_shards(data, row_bytes(clf, cfg), shard_bytes)
    report = build_shards(
        clf,
        data,
        cfg,
        path,
        fp,
        plan,
        distributed.rank(),
        distributed.world(),
        progress=progress and distributed.is_main(),
        free_bytes=free_bytes,
    )
    distributed.barrier()
    seconds = time.perf_counter() - t0
    if distributed.is_main():
        try:
            finish_cache(clf, cfg, path, fp, plan, seconds)
        except CacheInvalid as e:  # another machine's shards are on its own disk
            log.info("prefix cache at %s: %s", path, e)
    distributed.barrier()
    if not all(distributed.all_gather(_readable(path, fp))):
        log.info("prefix cache at %s is not on a disk every process sees: each machine completes its own copy", path)

        def complete_here() -> None:
            if not _readable(path, fp):
                build_shards(clf, data, cfg, path, fp, plan, progress=progress, free_bytes=free_bytes)
                finish_cache(clf, cfg, path, fp, plan, time.perf_counter() - t0)

        distributed.in_turn(complete_here)
    cache = load_cache(path, fp, verify=False)  # each shard was hashed as written or checked on resume
    cache.status, cache.build_seconds, cache.reason, cache.resumed_shards = "built", seconds, reason, report.resumed
    log.info(
        "prefix cache built at %s in %.1f s: %d shard(s) written here, %d resumed, %s on disk (%s)",
        cache.path,
        seconds,
        report.built,
        report.resumed,
        human_bytes(cache.bytes),
        cache.manifest["dtype"],
    )
    return cache


def _readable(path: str | Path, fp: dict) -> bool:
    """Whether this process finds a complete cache for ``fp`` at ``path`` (sizes checked, not hashes)."""
    try:
        load_cache(path, fp, verify=False)
        return True
    except CacheInvalid:
        return False


def _unusable(path: Path, fp: dict, data: dict[str, Encoded], verify: bool | str) -> str | None:
    """Why the cache at ``path`` cannot serve ``data`` (None: it can)."""
    try:
        cache = load_cache(path, fp, verify)
        for name, enc in data.items():  # the data hash says so; lengths are a cheap second check
            if name not in cache.manifest["splits"] or not np.array_equal(cache.lengths(name), enc.lengths()):
                return f"split {name} disagrees with the data"
    except CacheInvalid as e:
        return str(e)
    return None


def prepare_cache(
    clf,
    data: dict[str, Encoded],
    cfg: TrainingConfig,
    path: str | Path | None = None,
    progress: bool | None = None,
    rebuild: bool = False,
    block: int | None = None,
) -> PrefixCache:
    """The cache of this model, block, tokenizer, max_length, dtype and data under ``path`` (default
    ``training.cache_dir``, which holds one cache per fingerprint: :mod:`toptune.cache.shelf`): reused when
    complete and valid (its shards checked per ``training.cache_verify``), else built, resuming the complete
    shards of an interrupted build; then marked used (and held) while least recently used caches beyond
    ``training.cache_max_bytes`` go. Under torchrun every process calls it: rank 0 checks the hashes, the
    others the sizes, and all reuse the cache only if every one of them can; else they build it together
    (:func:`build_cache`).

    ``block``: the block whose input to store (at most the first trainable block; a sweep over K gives its
    deepest K's). By default the first trainable block's, unless only a cache of an earlier block of the
    same model and data is there (:func:`toptune.cache.shelf.deeper_cache`): it serves, the blocks between
    run frozen."""
    root = Path(path or cfg.cache_dir)
    progress = cfg.progress if progress is None else progress
    if block is not None and not 0 < block <= clf.first_trainable_block:
        raise ValueError(f"a cache for blocks {clf.first_trainable_block}… stores block 1…{clf.first_trainable_block}")
    fp = fingerprint(clf, data, cfg, block)
    here = cache_path(root, fp)
    if block is None and not rebuild and not (here / MANIFEST).is_file():
        here, fp = next((d for d in distributed.all_gather(deeper_cache(root, clf, data, cfg)) if d), (here, fp))
    dropout = float(getattr(backbone(clf.model).config, "attention_dropout", 0.0) or 0.0)
    if dropout > 0 and distributed.is_main():
        log.warning(
            "the model's attention_dropout is %s: the prefix is cached in eval mode (no dropout), "
            "the live no_grad prefix would apply it",
            dropout,
        )
    if distributed.is_main():
        clear_old_layout(root)
    if rebuild and distributed.is_main():
        remove_cache(here)
    verify = cfg.cache_verify if distributed.is_main() else False
    reason = "rebuild requested" if rebuild else None
    reason = reason or next((r for r in distributed.all_gather(_unusable(here, fp, data, verify)) if r), None)
    if reason is None:
        cache = load_cache(here, fp, verify=False)  # checked just now
        log.info("prefix cache at %s reused (%s, fingerprint matches)", here, human_bytes(cache.bytes))
    else:
        if reason.startswith("no cache at"):
            log.info("no prefix cache at %s yet; building it", here)
        elif not rebuild:
            log.warning("prefix cache at %s is not usable: %s; rebuilding", here, reason)
        if distributed.is_main():  # room for it first
            rb = row_bytes(clf, cfg)
            evict(root, here, cfg.cache_max_bytes, sum(shard_bytes_of(j, rb) for j in plan_shards(data, rb)))
        distributed.barrier()
        cache = build_cache(clf, data, cfg, here, fp, progress, reason=reason)
    cache.lock = mark_used(here)
    if distributed.is_main():
        evict(root, here, cfg.cache_max_bytes)
    return cache

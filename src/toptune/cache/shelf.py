"""``training.cache_dir`` holds many caches side by side, one per fingerprint key, so the runs of a sweep,
of several seeds or of two configurations run alternately each find their own::

    <cache_dir>/<key>/          one cache (:mod:`toptune.cache.store`), key = 16 hex digits of its fingerprint
    <cache_dir>/<key>/.used     touched at every build and reuse: its time orders the least recently used
    <cache_dir>/<key>/.lock     held shared (``flock``) by every process using that cache

A run training blocks F… uses the cache of the states entering F, or else one entering an earlier block
of the same model and data (:func:`deeper_cache`: a sweep over K builds once, at its deepest K), running
the blocks between frozen. Per token and epoch that costs the blocks between once more (forward only),
where a derived cache at F would cost one pass over them and a second cache on disk: with the few blocks
a sweep spans (K 2…4), recomputing them is the smaller bill in disk and, below ~5 epochs a trial, in time.

Beyond ``training.cache_max_bytes`` (or, when it is null, when the disk would keep less than
:data:`FREE_SHARE` of its size free), the least recently used caches are removed, never one a live process
holds (an exclusive ``flock`` that cannot be taken means in use; on a disk shared by several machines the
lock holds where the file system supports ``flock``, as NFSv4 and Lustre do).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toptune.cache.fingerprint import fingerprint, fingerprint_key
from toptune.cache.store import MANIFEST, cache_files, human_bytes, remove_cache

log = logging.getLogger(__name__)

USED, LOCK = ".used", ".lock"
FREE_SHARE = 0.05
"""With ``training.cache_max_bytes: null``: old caches go when the disk would keep less than this share
of its size free."""


def cache_path(root: str | Path, fp: dict) -> Path:
    """The directory of the cache of fingerprint ``fp`` under ``root`` (``training.cache_dir``)."""
    return Path(root) / fingerprint_key(fp)


@dataclass
class Shelved:
    """One cache directory under the root."""

    path: Path
    bytes: int
    last_used: float
    """Seconds since the epoch of its last build or reuse (the manifest's time when never marked)."""


def shelved(root: Path) -> list[Shelved]:
    """Every cache directory under ``root`` (complete or not), least recently used first."""
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        files = cache_files(d) if d.is_dir() else []
        if not files:
            continue
        stamp = d / USED if (d / USED).exists() else (d / MANIFEST if (d / MANIFEST).exists() else files[0])
        out.append(Shelved(d, sum(f.stat().st_size for f in files), stamp.stat().st_mtime))
    return sorted(out, key=lambda s: s.last_used)


_HELD: dict[Path, int] = {}
"""The lock descriptor this process holds per cache directory (one, however often the cache is used)."""


def mark_used(path: Path) -> int:
    """Touch ``path``'s use stamp and take its shared lock; returns the lock's descriptor (held until the
    process ends or :func:`release` closes it): an eviction elsewhere leaves this cache alone meanwhile."""
    (path / USED).touch()  # an existing file gets the time now
    key = path.resolve()
    if key not in _HELD:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _HELD[key] = fd
    return _HELD[key]


def release(fd: int | None) -> None:
    """Drop the lock :func:`mark_used` returned (this process is done with that cache)."""
    for key, held in list(_HELD.items()):
        if held == fd:
            del _HELD[key]
            os.close(fd)


def _in_use(path: Path) -> bool:
    """Whether another process holds ``path``'s lock (shared or exclusive)."""
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this call took


def evict(
    root: str | Path,
    keep: Path,
    max_bytes: int | None,
    incoming: int = 0,
    free_bytes: Callable[[Path], int] | None = None,
) -> list[Path]:
    """Remove least recently used caches under ``root`` (never ``keep``, never one in use) until they and
    ``incoming`` bytes about to be written fit ``max_bytes``, or with ``max_bytes`` None until the disk
    keeps :data:`FREE_SHARE` of its size free after ``incoming``. Returns the directories removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    free = free_bytes or (lambda d: shutil.disk_usage(d).free)
    margin = FREE_SHARE * shutil.disk_usage(root).total
    caches = shelved(root)
    total = sum(c.bytes for c in caches)
    removed: list[Path] = []
    for c in caches:
        over = total + incoming > max_bytes if max_bytes is not None else free(root) - incoming < margin
        if not over:
            break
        if c.path == keep or _in_use(c.path):
            continue
        remove_cache(c.path)
        for f in (USED, LOCK):
            (c.path / f).unlink(missing_ok=True)
        try:
            c.path.rmdir()
        except OSError:  # something else lives there: the cache's files are gone all the same
            pass
        total -= c.bytes
        removed.append(c.path)
        log.info("prefix cache %s removed (%s, least recently used)", c.path.name, human_bytes(c.bytes))
    return removed


def deeper_cache(root: str | Path, clf, data: dict, cfg) -> tuple[Path, dict] | None:
    """A complete cache under ``root`` of the states entering a block before the run's first trainable one,
    for this model, tokenizer, max_length, dtype and data (its fingerprint equal to this run's at its
    block): a cache built for more trainable blocks serving a run of fewer. The latest such block wins (the
    fewest frozen blocks to run between); None when there is none."""
    found = []
    for s in shelved(Path(root)):
        try:
            stored = json.loads((s.path / MANIFEST).read_text())["fingerprint"]
            block = int(stored["first_trainable_block"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if 0 < block < clf.first_trainable_block:
            found.append((block, s.path, stored))
    for block, path, stored in sorted(found, key=lambda f: -f[0]):
        if fingerprint(clf, data, cfg, block) == stored:
            return path, stored
    return None


def clear_old_layout(root: Path) -> None:
    """Remove a cache written straight into ``root`` by an earlier version (one cache per directory)."""
    if cache_files(root):
        log.info("prefix cache at %s: removing the single cache of the earlier layout", root)
        remove_cache(root)

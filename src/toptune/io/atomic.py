"""Files and directories written whole or not at all: a temporary name, fsync, then rename into place.

Every atomic write of toptune goes through here: the prefix cache's shards and manifest
(:class:`AtomicFile`, :func:`write_atomic`), the resume checkpoints and the model bundle (a directory
staged under a temporary name, then :func:`swap_dir`). One temporary-name scheme serves them all::

    .<name>.tmp-<host>-<pid>    a file or directory being written by process <pid> on <host>
    .<name>.old-<host>-<pid>    the previous directory, kept aside while :func:`swap_dir` swaps

so the one sweeper (:func:`toptune.io.debris.clear_debris`) can tell a dead process's leftovers (removed)
from a live one's (left alone), even in a directory several machines share.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path

import numpy as np


def temp_path(final: Path, kind: str = "tmp") -> Path:
    """``<parent>/.<name>.<kind>-<host>-<pid>``: this process's temporary name for ``final``."""
    final = Path(final)
    return final.parent / f".{final.name}.{kind}-{socket.gethostname()}-{os.getpid()}"


def staging_dir(final: str | Path) -> Path:
    """``<parent>/.<name>.tmp-<host>-<pid>/<name>``: where a directory is written before :func:`swap_dir`
    (the same basename as ``final``, so a bundle logs to MLflow under the same artifact path)."""
    final = Path(final)
    return temp_path(final) / final.name


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root``, ``root`` last."""
    for parent, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(parent) / name)
        fsync_path(Path(parent))


def swap_dir(staged: str | Path, final: str | Path) -> Path:
    """Make the complete directory ``staged`` (``temp_path(final)`` or ``staging_dir(final)``) the
    directory ``final``: fsync its files and itself, set the previous ``final`` aside as
    ``.<name>.old-<host>-<pid>``, rename ``staged`` into place, fsync the parent, then remove the old
    one. A process killed at any instant leaves the old directory or the new one under ``final`` (or
    the old one aside, which the sweeper puts back), never a mix."""
    staged, final = Path(staged), Path(final)
    fsync_tree(staged)
    old = temp_path(final, "old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staged.rename(final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(temp_path(final), ignore_errors=True)  # the container of a staging_dir (gone otherwise)
    return final


def discard_dir(final: str | Path) -> None:
    """Remove what this process staged for ``final`` (a failed run's bundle)."""
    shutil.rmtree(temp_path(Path(final)), ignore_errors=True)


class AtomicFile:
    """A file written under a temporary name, hashed as it is written, fsynced and renamed into
    place by :meth:`commit`; removed on :meth:`abort` (or an exception inside ``with``)."""

    def __init__(self, final: Path):
        self.final, self.tmp = Path(final), temp_path(Path(final))
        self._f = open(self.tmp, "wb")
        self._sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        self._f.write(view)
        self._sha.update(view)
        self.bytes += view.nbytes

    def commit(self) -> dict:
        """Flush, fsync, rename; returns ``{"bytes", "sha256"}`` of the file."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.final)
        fsync_path(self.final.parent)
        return {"bytes": self.bytes, "sha256": self._sha.hexdigest()}

    @property
    def closed(self) -> bool:
        """Committed or aborted."""
        return self._f.closed

    def abort(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None or not self.closed:
            self.abort()


def write_atomic(final: Path, data: bytes) -> dict:
    with AtomicFile(final) as f:
        f.write(data)
        return f.commit()


def write_index(final: Path, index: np.ndarray) -> dict:
    """The shard's (examples, 3) int64 index as ``.npy``, atomically."""
    with AtomicFile(final) as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(index))
        f.write(np.ascontiguousarray(index, dtype="<i8").tobytes())
        return f.commit()

"""Files written whole or not at all (the prefix cache's shards and manifest; checkpoints fsync through
:func:`fsync_path`): a temporary name, fsync, then rename into place.

A temporary file is named ``.<name>.tmp-<host>-<pid>``, so a later build can tell the leftovers of
a dead process (removed) from the files a live one is writing (left alone).
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import numpy as np


def temp_path(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}"


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def abort(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None or not self._f.closed:
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

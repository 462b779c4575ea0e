"""One way to hash files: sha256, read in chunks (never a whole file in memory).

:func:`files_sha256` names a set of files (a checkpoint's weights, its tokenizer files, a bundle's own
weights, the raw table): one line ``<name>:<sha256 of the bytes>`` per file, in name order, hashed
again. A bundle's ``toptune.json`` stores such digests and a later version recomputes them, so this
format stays as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of one file's bytes (``hashlib.file_digest`` reads it in chunks)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def files_sha256(paths: Iterable[Path], root: Path | None = None) -> str:
    """One sha256 over the names and contents of ``paths``, sorted by name: a file's name is its path
    relative to ``root``, or its basename without one."""
    named = sorted((str(p.relative_to(root)) if root is not None else p.name, p) for p in map(Path, paths))
    h = hashlib.sha256()
    for name, p in named:
        h.update(f"{name}:{file_sha256(p)}\n".encode())
    return h.hexdigest()


def path_sha256(path: Path) -> str:
    """:func:`files_sha256` of a file, or of every file under a directory (names relative to it)."""
    path = Path(path)
    if path.is_file():
        return files_sha256([path])
    return files_sha256((p for p in path.rglob("*") if p.is_file()), root=path)

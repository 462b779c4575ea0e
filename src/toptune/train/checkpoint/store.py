"""Checkpoints on disk: written atomically, read back whole or not at all.

One checkpoint is one directory ``<job>-e<epoch>-s<step>/`` (``job``: the first 12 hex digits of
the fingerprint's hash) holding::

    state.pt     tensors: trainable weights (adapter + head), the best epoch's, optimizer, scheduler,
                 RNG states per rank
    meta.json    fingerprint, MLflow run id, epoch / batch / step, the metric history so far, the
                 best epoch, the size and sha256 of state.pt; written last

It is written under a temporary name and swapped into place by :func:`toptune.io.atomic.swap_dir`
(every file, the directory and its parent fsync'ed): a process killed at any instant leaves either the
previous checkpoints or a complete new one, never a directory that looks complete and is not. The
temporary directories of dead processes are cleared at the next write (:mod:`toptune.io.debris`).
``state_sha256`` is :func:`toptune.io.hashing.file_sha256`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from toptune.errors import CheckpointError
from toptune.io.atomic import swap_dir, temp_path
from toptune.io.debris import clear_debris
from toptune.io.hashing import file_sha256

STATE = "state.pt"
META = "meta.json"


@dataclass
class Checkpoint:
    """A complete checkpoint directory and its metadata."""

    path: Path
    meta: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def load_state(self) -> dict:
        """The tensors of ``state.pt`` (on the CPU), after checking its size and sha256."""
        f = self.path / STATE
        if not f.is_file():
            raise CheckpointError(f"checkpoint {self.path} has no {STATE}")
        if f.stat().st_size != self.meta["state_bytes"] or file_sha256(f) != self.meta["state_sha256"]:
            raise CheckpointError(
                f"checkpoint {self.path}: {STATE} does not match its meta.json (truncated or altered)"
            )
        return torch.load(f, map_location="cpu", weights_only=True)


def job_key(fingerprint: dict) -> str:
    """12 hex digits naming the fingerprint (the checkpoints of one job share it)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write(directory: Path, name: str, state: dict, meta: dict) -> Checkpoint:
    """Write ``state`` (tensors) and ``meta`` as checkpoint ``directory/name``, atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    clear_debris(directory, own_pid=os.getpid())
    final = directory / name
    tmp = temp_path(final)
    tmp.mkdir()
    torch.save(state, tmp / STATE)
    meta = {
        **meta,
        "state_bytes": (tmp / STATE).stat().st_size,
        "state_sha256": file_sha256(tmp / STATE),
        "created": time.time(),
    }
    (tmp / META).write_text(json.dumps(meta, indent=1))
    # The same step written again after a resume holds the same state: the swap replaces it.
    return Checkpoint(swap_dir(tmp, final), meta)


def read(path: str | Path) -> Checkpoint:
    """The checkpoint at ``path``; :class:`CheckpointError` (one line) when it is not a complete one."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no {META} (incomplete)") from None
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: {META} is unreadable ({e})") from None
    if not (path / STATE).is_file() or (path / STATE).stat().st_size != meta.get("state_bytes"):
        raise CheckpointError(f"checkpoint {path}: {STATE} is missing or truncated")
    return Checkpoint(path, meta)


def newest_first(directory: str | Path) -> list[Checkpoint]:
    """Every complete checkpoint in ``directory``, newest first (temporary and broken ones left out)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        if p.name.startswith("."):
            continue
        try:
            out.append(read(p))
        except CheckpointError:
            continue
    return sorted(out, key=lambda c: (c.meta.get("created", 0.0), c.step), reverse=True)


def prune(directory: str | Path, job: str, run_id: str | None, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints of ``job`` and ``run_id``; returns what went."""
    mine = [c for c in newest_first(directory) if c.meta.get("job") == job and c.meta.get("run_id") == run_id]
    gone = [c.path for c in mine[keep:]]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone

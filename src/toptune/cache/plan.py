"""The build as a deterministic plan of independent shard jobs.

Each split's examples are put in build order (longest first, ties in split order: batches of one
length have no padding, and the first batch shows the build's peak memory) and cut into shards of
at most ``shard_bytes`` (whole examples; one zero row per shard for padding). Job ``i`` of the plan
is the same on every process for the same data, so N processes can each build the jobs
``{i : i % world == rank}`` into one directory (:func:`jobs_of_rank`), and one of them writes the
manifest once all are done.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from toptune.data.tokens import Encoded

SHARD_BYTES = 256 << 20
"""Largest shard file. Shards are written batch by batch, so this bounds how much an interrupted
build loses, not how much memory a build takes."""
INDEX_COLUMNS = ("example", "length", "pooled")
"""Columns of a shard's index (int64 per example, in storage order): the example's position in
its split, its token count, and its pooling position."""


@dataclass(frozen=True, eq=False)
class ShardJob:
    """One shard to build: which examples of which split, in build (= storage) order."""

    split: str
    """Split name (``train`` / ``val`` / ``test``)."""
    index: int
    """Shard number within the split."""
    examples: np.ndarray
    """(n,) positions in the split of the shard's examples, in storage order."""
    tokens: int
    """Σ lengths of the shard's examples (rows of hidden states, the padding row aside)."""

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}"

    def signature(self) -> str:
        """Digest of what the job covers (a shard on disk is resumed only for the same job)."""
        h = hashlib.sha256(f"{self.split}|{self.index}|{self.tokens}|".encode())
        h.update(np.ascontiguousarray(self.examples, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


def build_order(lengths: np.ndarray) -> np.ndarray:
    """(N,) example positions, longest first; equal lengths keep split order."""
    return np.argsort(-lengths, kind="stable")


def plan_shards(data: dict[str, Encoded], row_bytes: int, shard_bytes: int = SHARD_BYTES) -> list[ShardJob]:
    """Every split's shard jobs, splits in sorted order; ``row_bytes`` = bytes of one token's state (D × dtype)."""
    plan = []
    for name in sorted(data):
        lengths = data[name].lengths()
        order = build_order(lengths)
        ends = np.cumsum(lengths[order] + 0)  # (N,) tokens up to and including each example
        start, index = 0, 0
        while start < len(order):
            before = ends[start - 1] if start else 0
            budget = shard_bytes // row_bytes - 1  # rows that fit, the padding row aside
            stop = max(int(np.searchsorted(ends, before + budget, side="right")), start + 1)
            plan.append(ShardJob(name, index, order[start:stop], int(ends[stop - 1] - before)))
            start, index = stop, index + 1
    return plan


def jobs_of_rank(plan: list[ShardJob], rank: int = 0, world: int = 1) -> list[ShardJob]:
    """The jobs process ``rank`` of ``world`` builds: ``{i : i % world == rank}``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank={rank} must be in [0, world={world})")
    return [job for i, job in enumerate(plan) if i % world == rank]


def shard_bytes_of(job: ShardJob, row_bytes: int) -> int:
    """Bytes a job writes: its rows plus the padding row, and its index."""
    return (job.tokens + 1) * row_bytes + len(job.examples) * len(INDEX_COLUMNS) * 8 + 128

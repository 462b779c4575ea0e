"""Reading a complete cache: its manifest, its shards through memory maps, one split at a time.

Shards are mapped with ``numpy.memmap`` and wrapped by ``torch.from_numpy`` (viewed as the storage
dtype; bf16 from its 16 bits), rather than opened with safetensors' ``safe_open``: ``get_tensor`` /
``get_slice`` copy what they return into the process's own (anonymous) memory, where a
memmap-backed tensor *is* the file's pages: page cache, which the kernel can drop and re-read,
not memory the process owns. One ``index_select`` on it then gathers a batch's rows straight from
those pages (one per shard the batch touches: mostly one, since bucketed batches hold examples
of one length and the store is length-sorted). Raw files also let a shard be written batch by
batch, where safetensors wants the whole tensor at once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from toptune.cache.batches import CachedSplit
from toptune.cache.plan import INDEX_COLUMNS
from toptune.cache.store import MANIFEST, CacheInvalid, check_shards, read_manifest
from toptune.data.batches import label_array
from toptune.data.tokens import Encoded


def map_hidden(directory: Path, shard: dict, dtype: torch.dtype, hidden_size: int) -> Tensor:
    """(tokens + 1, D) in ``dtype``, backed by the shard file's pages (read-only; nothing is read until used)."""
    raw = np.memmap(directory / shard["hidden"]["file"], dtype=np.uint8, mode="r")
    with warnings.catch_warnings():  # read-only on purpose: the cache is never written through a map
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(raw)
    t = t.view(dtype).view(-1, hidden_size)
    if t.shape[0] != shard["tokens"] + 1:
        raise CacheInvalid(
            f"shard {shard['hidden']['file']} holds {t.shape[0]} rows, manifest says {shard['tokens'] + 1}"
        )
    return t


def read_index(directory: Path, shard: dict) -> np.ndarray:
    """(examples, 3) int64 in storage order: position in the split, length, pooling position."""
    try:
        index = np.load(directory / shard["index"]["file"])
    except (OSError, ValueError) as e:
        raise CacheInvalid(f"shard {shard['index']['file']} is unreadable ({e})") from None
    if index.shape != (shard["examples"], len(INDEX_COLUMNS)) or int(index[:, 1].sum()) != shard["tokens"]:
        raise CacheInvalid(f"shard {shard['index']['file']} does not match its manifest entry")
    return index


@dataclass
class PrefixCache:
    """A complete, valid cache: where it lives, what it is for, how it came to be."""

    path: Path
    fingerprint: dict
    manifest: dict
    bytes: int
    """Size on disk (shards, indexes, manifest)."""
    status: str
    """``built`` (this call built or finished it) or ``reused``."""
    build_seconds: float | None = None
    """Wall time of the build (None when reused)."""
    reason: str | None = None
    """Why it was (re)built: ``no cache``, ``stale: …``, ``shard … truncated``, …"""
    resumed_shards: int = 0
    """Shards an interrupted build had completed and this build kept."""
    lock: int | None = None
    """The descriptor of the shared lock this process holds on the cache while it uses it
    (:func:`toptune.cache.shelf.mark_used`), or None."""

    @property
    def block(self) -> int:
        """The block whose input the cache stores: a run training blocks from this one on, or from a later one
        (the blocks between then run frozen from the stored states)."""
        return int(self.fingerprint["first_trainable_block"])

    @property
    def storage_dtype(self) -> torch.dtype:
        return getattr(torch, self.manifest["dtype"])

    @property
    def compute_dtype(self) -> torch.dtype:
        """What the blocks take (the weights' dtype at build time): a bf16 store is cast up per batch."""
        return getattr(torch, self.manifest["compute_dtype"])

    def _index(self, name: str) -> list[np.ndarray]:
        if name not in self.manifest["splits"]:
            raise CacheInvalid(f"the cache at {self.path} has no split {name!r}")
        return [read_index(self.path, s) for s in self.manifest["splits"][name]["shards"]]

    def lengths(self, name: str) -> np.ndarray:
        """(N,) tokens per example of split ``name``, in split order."""
        out = np.zeros(self.manifest["splits"][name]["examples"], dtype=np.int64)
        for index in self._index(name):
            out[index[:, 0]] = index[:, 1]
        return out

    def split(self, name: str, enc: Encoded, pad_token_id: int | None = None) -> CachedSplit:
        """The split ``name`` mapped from disk, with the labels of ``enc`` (its tokenised data; the
        pooling positions were stored by the build, ``pad_token_id`` is kept for callers)."""
        shards, starts, row = [], [], 0
        n = self.manifest["splits"].get(name, {}).get("examples")
        if n != len(enc):
            raise CacheInvalid(f"split {name} has {n} examples in the cache at {self.path}, {len(enc)} in the data")
        offsets, lengths, pooled = (np.zeros(n, dtype=np.int64) for _ in range(3))
        for shard, index in zip(self.manifest["splits"][name]["shards"], self._index(name), strict=True):
            shards.append(map_hidden(self.path, shard, self.storage_dtype, self.manifest["hidden_size"]))
            starts.append(row)
            ex = index[:, 0]
            offsets[ex] = row + np.concatenate([[0], np.cumsum(index[:-1, 1])])
            lengths[ex], pooled[ex] = index[:, 1], index[:, 2]
            row += shard["tokens"] + 1
        return CachedSplit(
            shards,
            np.asarray(starts, dtype=np.int64),
            offsets,
            lengths,
            pooled,
            label_array(enc.labels),
            self.compute_dtype,
        )

    def summary(self) -> dict:
        """Flat facts for logging: path, status, bytes, build seconds, examples and tokens, fingerprint."""
        splits = self.manifest["splits"]
        return {
            "path": str(self.path),
            "status": self.status,
            "reason": self.reason,
            "bytes": self.bytes,
            "build_seconds": self.build_seconds,
            "resumed_shards": self.resumed_shards,
            "shards": sum(len(s["shards"]) for s in splits.values()),
            "dtype": self.manifest["dtype"],
            "examples": {k: v["examples"] for k, v in splits.items()},
            "tokens": {k: v["tokens"] for k, v in splits.items()},
            "fingerprint": self.fingerprint,
        }


def load_cache(path: str | Path, fp: dict, verify: bool | str = True) -> PrefixCache:
    """The cache at ``path`` (one cache's own directory) if it is complete (has its manifest), intact (every
    shard present, of its size and, per ``verify``, of its sha256: :func:`toptune.cache.store.check_shards`)
    and made for fingerprint ``fp``; else :class:`CacheInvalid` saying why. A directory without a manifest
    is never used."""
    path = Path(path)
    manifest = read_manifest(path, fp)
    check_shards(path, manifest, verify)
    return PrefixCache(
        path, manifest["fingerprint"], manifest, manifest["shard_bytes"] + (path / MANIFEST).stat().st_size, "reused"
    )

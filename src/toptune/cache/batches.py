"""Batches from the cache: which examples go together (order), how they are gathered (one
``index_select`` from the mapped shards), and a background thread that prepares the next ones.

Unbucketed, the batches are exactly the live modes' (``data.batch_indices``: same seed, same order,
same losses); bucketed, each batch holds examples of similar length (less padding) in a seeded
random batch order, and since the store is length-sorted its rows lie in one region of one shard.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from toptune.data.batches import batch_indices
from toptune.train.batches import Batch, Batches

BUCKET_WINDOW = 0
"""Length bucketing sorts windows of this many batches (0 = the whole split)."""
PREFETCH_BATCHES = 4
"""Batches the prefetch thread prepares ahead of the one training uses (CUDA; on the CPU there is no
prefetch thread: see :func:`cached_batches`)."""
PREFETCH_THREAD = "toptune-cache-prefetch"
"""Name prefix of the prefetch thread."""


@dataclass
class CachedSplit:
    """One split's stored hidden states (memory-mapped shards), with what re-padding needs."""

    shards: list[Tensor]
    """Per shard, (tokens + 1, D) in the storage dtype: examples back to back, then a zero row."""
    starts: np.ndarray
    """(S,) row of each shard's first row, the shards laid end to end."""
    offsets: np.ndarray
    """(N,) row of each example's first token, in split order."""
    lengths: np.ndarray
    """(N,) tokens per example."""
    pooled: np.ndarray
    """(N,) pooling position per example (the stock classifier's rule, stored by the build)."""
    labels: np.ndarray
    """(N,) class index per example."""
    dtype: torch.dtype
    """Dtype the blocks take (a bf16 store is cast up per batch, on the device)."""

    def __len__(self) -> int:
        return len(self.lengths)

    def gather(self, idx: np.ndarray, pin: bool = False) -> Batch:
        """Right-padded batch of examples ``idx`` on the CPU (pinned with ``pin``): ``hidden`` (B, T, D)
        in the storage dtype, ``attention_mask`` (B, T), ``pooled`` (B,), ``labels`` (B,)."""
        idx = np.asarray(idx, dtype=np.int64)
        lens = self.lengths[idx]
        width = max(int(lens.max()), 1)
        real = np.arange(width)[None, :] < lens[:, None]  # (B, T)
        shard = np.searchsorted(self.starts, self.offsets[idx], side="right") - 1  # (B,) one shard per example
        local = self.offsets[idx] - self.starts[shard]  # (B,) first row inside its shard
        pad = np.asarray([len(s) - 1 for s in self.shards])[shard]  # (B,) the shard's zero row
        rows = torch.from_numpy(np.where(real, local[:, None] + np.arange(width), pad[:, None]))  # (B, T)
        dim = self.shards[0].shape[1]
        hidden = torch.empty((len(idx), width, dim), dtype=self.shards[0].dtype, pin_memory=pin)
        used = np.unique(shard)
        if len(used) == 1:  # the usual case: one gather straight into the batch
            torch.index_select(self.shards[used[0]], 0, rows.view(-1), out=hidden.view(-1, dim))
        else:
            for s in used:
                sel = torch.from_numpy(np.flatnonzero(shard == s))
                hidden.index_copy_(
                    0, sel, self.shards[s].index_select(0, rows[sel].view(-1)).view(len(sel), width, dim)
                )
        return {
            "hidden": hidden,
            "attention_mask": torch.from_numpy(real.astype(np.int64)),
            "pooled": torch.from_numpy(self.pooled[idx]),
            "labels": torch.from_numpy(self.labels[idx]),
        }

    def to_device(self, b: Batch, device: torch.device) -> Batch:
        """``b`` on ``device`` (``non_blocking``: from pinned memory the copy overlaps compute), states in
        ``dtype``. A batch with no padding goes without ``attention_mask``: the host knows it here, so the
        blocks take plain causal attention instead of asking the device whether the mask is all ones (a
        wait for the device every step)."""
        unpadded = bool(b["attention_mask"].numpy().all())  # (B, T), host memory: read without a torch op
        out = {k: v.to(device, non_blocking=True) for k, v in b.items() if not (unpadded and k == "attention_mask")}
        out["hidden"] = out["hidden"].to(self.dtype)
        return out

    def batch(self, idx: np.ndarray, device: torch.device) -> Batch:
        """Examples ``idx`` gathered and moved to ``device``, as ``rows_batch`` + the live prefix would give."""
        return self.to_device(self.gather(idx, pin=device.type == "cuda"), device)


def bucketed_indices(lengths: np.ndarray, batch_size: int, seed: int, window: int = 0) -> list[np.ndarray]:
    """Batches of similar length, in a seeded random order.

    A seeded permutation is cut into windows of ``window`` batches (0 = the whole split), each
    window is stably sorted by length (so examples of one length stay in random order), cut into
    batches, and the batches are shuffled. Same count and sizes of batches as unbucketed.
    """
    rng = np.random.default_rng(seed)
    n = len(lengths)
    perm = rng.permutation(n)
    span = n if window <= 0 else window * batch_size
    order = (
        np.concatenate(
            [c[np.argsort(lengths[c], kind="stable")] for c in (perm[i : i + span] for i in range(0, n, span))]
        )
        if n
        else perm
    )
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng.shuffle(out)
    return out


def padding_fraction(lengths: np.ndarray, batches: Iterable[np.ndarray]) -> float:
    """Share of the padded (B × T) positions that are padding."""
    padded = real = 0
    for idx in batches:
        lens = lengths[idx]
        padded += len(idx) * int(lens.max())
        real += int(lens.sum())
    return 1 - real / padded if padded else 0.0


def bucketing_padding(lengths: np.ndarray, batch_size: int, seed: int, epochs: int = 1) -> dict[str, float]:
    """Padding share of the train batches without and with length bucketing, averaged over the
    first ``epochs`` epochs (epoch ``e`` shuffles with seed ``seed + e``, as training does)."""

    def mean(batches_of) -> float:
        return float(np.mean([padding_fraction(lengths, batches_of(seed + e)) for e in range(epochs)]))

    return {
        "padding_fraction_unbucketed": mean(lambda s: batch_indices(len(lengths), batch_size, True, s)),
        "padding_fraction_bucketed": mean(lambda s: bucketed_indices(lengths, batch_size, s, BUCKET_WINDOW)),
    }


def epoch_indices(split: CachedSplit, batch_size: int, shuffle: bool, seed: int, bucket: bool) -> list[np.ndarray]:
    """Example indices per batch. Unbucketed = exactly the live modes' order (``data.batch_indices``);
    bucketed = :func:`bucketed_indices` (training) or length-sorted (evaluation, then restored)."""
    if not bucket:
        return batch_indices(len(split), batch_size, shuffle, seed)
    if shuffle:
        return bucketed_indices(split.lengths, batch_size, seed, BUCKET_WINDOW)
    order = np.argsort(split.lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _use_gpu(gpu: int | None) -> None:
    """The prefetch thread's start: work on the caller's GPU (None: the CPU)."""
    if gpu is not None:
        torch.cuda.set_device(gpu)


def prefetched(
    make: Callable[[np.ndarray], Batch],
    items: Iterable[np.ndarray],
    depth: int = PREFETCH_BATCHES,
    device: torch.device | None = None,
) -> Iterator[Batch]:
    """``make(item)`` for each item, in order, computed by one background thread up to ``depth`` items
    ahead (``depth`` 0: in the caller's thread, when it is asked for).

    The thread's exceptions re-raise here; when the consumer stops early (``break``, an exception,
    the generator closed or collected) the items not started are cancelled and the thread joined.
    On CUDA the thread works on ``device`` (a new thread starts on GPU 0: pinned allocations there
    would open a context on it in every process of a multi-GPU run).
    """
    if depth <= 0:
        yield from (make(item) for item in items)
        return
    # Resolved here, in the caller's thread: a bare ``cuda`` means the caller's current GPU.
    gpu = (
        (device.index if device.index is not None else torch.cuda.current_device())
        if device is not None and device.type == "cuda"
        else None
    )
    ahead: deque[Future] = deque()
    with ThreadPoolExecutor(1, PREFETCH_THREAD, _use_gpu, (gpu,)) as pool:
        try:
            for item in items:
                ahead.append(pool.submit(make, item))
                if len(ahead) > depth:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for future in ahead:
                future.cancel()


def cached_batches(
    split: CachedSplit,
    batch_size: int,
    shuffle: bool,
    seed: int,
    bucket: bool,
    device: torch.device,
    depth: int | None = None,
) -> Batches:
    """Batches re-padded from the cache, reshuffled per epoch with seed ``seed + epoch``: indices first
    (under torchrun each process takes its share of them), gathered and moved to ``device`` as they
    are used.

    ``depth`` (default: :data:`PREFETCH_BATCHES` on CUDA, 0 on the CPU) batches are gathered ahead by a
    prefetch thread, into pinned memory. On CUDA the host cores wait for the device, and the thread's
    gathers and copies overlap its compute. On the CPU the cores are busy computing the blocks: a second
    thread's ``index_select`` starts a second OpenMP pool that fights the first for them (a 28-block
    bench's cached epoch took 23.7 s with the thread, 8.8 s without; the gather itself is ~2 % of it).
    """
    pin = device.type == "cuda"
    if depth is None:
        depth = PREFETCH_BATCHES if pin else 0

    def load(indices: Iterable[np.ndarray]) -> Iterator[Batch]:
        for b in prefetched(lambda idx: split.gather(idx, pin), indices, depth, device):
            yield split.to_device(b, device)

    return Batches(len(split), lambda epoch: epoch_indices(split, batch_size, shuffle, seed + epoch, bucket), load)

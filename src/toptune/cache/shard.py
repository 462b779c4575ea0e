"""One shard job computed and queued for writing: the prefix over its examples in length-sorted batches,
each batch's real rows handed to the build's writer thread (:class:`ShardWriter`) as they come, then the
shard's end (padding row, commit, index, receipt) handed to it too, so the next shard starts at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from toptune.cache.forward import pool_index, run_prefix
from toptune.cache.plan import ShardJob
from toptune.cache.store import files_of, write_receipt
from toptune.data.batches import rows_batch
from toptune.data.tokens import Encoded
from toptune.io.atomic import AtomicFile, write_index
from toptune.model.load import backbone
from toptune.train.device import autocast, to_device

BUILD_BATCH_TOKENS = {"cpu": 1024, "cuda": 32768}
"""Token budget (B × T) of one batch while building (length-sorted, so nearly no padding). On CPU
small batches win: their activations stay in cache (measured on 2 cores, width 256: 1024 tokens
6.8 s, 16384 tokens 10.3 s for the same split); a GPU wants large ones."""

WRITER_DEPTH = 2
"""Tasks (a batch's rows, a shard's end) that may wait for the writer thread: host memory holds this
many batches at most, and the device computes ahead by as many."""


class ShardWriter:
    """The build's one writer thread, living across shards. It runs what the build hands it, in order:
    a batch's rows appended to the open shard file (copied to the host, hashed, written), and at a
    shard's end its padding row, commit (fsync, rename), index and receipt. The device computes the
    next batch, and the next shard, meanwhile: a shard's end costs the building thread nothing.

    On CUDA a batch's device-to-host copy runs on a side stream, after the compute stream's work so far,
    into pinned memory; the thread waits for that copy's event, not for the device. At most
    :data:`WRITER_DEPTH` tasks wait. The first error the thread meets is raised in the building thread
    at its next call; every task after it is skipped, and :meth:`close` removes the files not committed.
    """

    def __init__(self, device: torch.device, depth: int = WRITER_DEPTH):
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.error: BaseException | None = None
        self.files: list[AtomicFile] = []
        self.q: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._work, name="toptune-cache-writer", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (task := self.q.get()) is not None:
            if self.error is None:
                try:
                    task()
                except BaseException as e:  # noqa: BLE001 — re-raised in the building thread
                    self.error = e

    def _submit(self, task: Callable[[], None]) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(task)

    def open(self, final: Path) -> AtomicFile:
        """A new shard file (its temporary name) to append to."""
        out = AtomicFile(final)
        self.files.append(out)
        return out

    def append(self, out: AtomicFile, rows: torch.Tensor) -> None:
        """Queue ``rows`` (N, D), on any device, to be appended to ``out`` in order."""
        if self.stream is None:
            host = rows.contiguous()
            self._submit(lambda: out.write(host.view(torch.uint8).numpy()))
            return
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(rows.device))  # rows are computed
        with torch.cuda.stream(self.stream):
            host.copy_(rows, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        rows.record_stream(self.stream)  # the allocator keeps rows' memory until the copy has read it

        def write() -> None:
            ready.synchronize()  # the copy into ``host`` has landed
            out.write(host.view(torch.uint8).numpy())

        self._submit(write)

    def then(self, task: Callable[[], None]) -> None:
        """Run ``task`` in the writer thread after everything queued so far (a shard's end)."""
        self._submit(task)

    def close(self) -> None:
        """Wait until every queued task has run; remove the files not committed; raise what the thread met."""
        self.q.put(None)
        self.thread.join()
        for out in self.files:
            if not out.closed:
                out.abort()
        if self.error is not None:
            raise self.error


def real_rows(lengths: np.ndarray, width: int) -> np.ndarray:
    """Flat (B·T) positions of the real tokens of right-padded rows of ``lengths``, row by row: what
    ``hidden[mask.bool()]`` selects, known on the host without waiting for the device."""
    return np.concatenate([r * width + np.arange(n) for r, n in enumerate(lengths)]).astype(np.int64)


@torch.inference_mode()
def build_shard(
    clf,
    enc: Encoded,
    lengths: np.ndarray,
    job: ShardJob,
    directory: Path,
    dtype: torch.dtype,
    fp_key: str,
    batch_tokens: int,
    writer: ShardWriter,
    on_batch: Callable[[int], None] | None = None,
    block: int | None = None,
) -> None:
    """Compute one shard of the states entering ``block`` (default: the first trainable block) and queue it
    on ``writer``: rows batch by batch, then the padding row, commit, index and receipt. ``lengths``: the
    split's (N,) tokens per example, read from its offsets once per build. The shard is complete once
    ``writer`` has run what was queued (:meth:`ShardWriter.close`)."""
    block = clf.first_trainable_block if block is None else block
    lengths = lengths[job.examples]  # (n,) longest first
    index = np.stack([job.examples, lengths, np.zeros_like(lengths)], axis=1)  # (n, 3): example, length, pooled
    dim = backbone(clf.model).config.hidden_size
    names = files_of(job, fp_key)
    out, i = writer.open(directory / names["hidden"]), 0
    while i < len(job.examples):
        take = slice(i, i + max(1, batch_tokens // max(int(lengths[i]), 1)))
        b = rows_batch(enc, job.examples[take], clf.pad_token_id)
        index[take, 2] = pool_index(b["input_ids"], clf.pad_token_id).numpy()
        ids, mask = to_device(b["input_ids"], clf.device), to_device(b["attention_mask"], clf.device)
        with autocast(clf.device):
            hidden = run_prefix(clf.model, ids, mask, block)  # (B, T, D)
        rows = to_device(torch.from_numpy(real_rows(lengths[take], ids.shape[1])), clf.device)
        writer.append(out, hidden.flatten(0, 1).index_select(0, rows).to(dtype))  # (Σ lengths, D), example by example
        i += len(lengths[take])
        if on_batch is not None:
            on_batch(len(lengths[take]))

    def finish() -> None:  # in the writer thread, after the shard's last rows
        out.write(torch.zeros(1, dim, dtype=dtype).view(torch.uint8).numpy())  # the padding row
        files = {"hidden": out.commit(), "index": write_index(directory / names["index"], index)}
        write_receipt(directory, job, fp_key, files)

    writer.then(finish)

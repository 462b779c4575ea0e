"""One shard job computed and written: the prefix over its examples in length-sorted batches, each
batch's real rows appended to the shard's file by a writer thread as they come (host memory holds a
few batches, never a shard), then the padding row, the index and the receipt.
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
from toptune.train.device import autocast

BUILD_BATCH_TOKENS = {"cpu": 1024, "cuda": 32768}
"""Token budget (B × T) of one batch while building (length-sorted, so nearly no padding). On CPU
small batches win: their activations stay in cache (measured on 2 cores, width 256: 1024 tokens
6.8 s, 16384 tokens 10.3 s for the same split); a GPU wants large ones."""


class _Writer:
    """Appends batches to a shard file from a background thread, so the device computes the next batch
    while this one is copied to the host, hashed and written (on a GPU those took as long as the prefix
    itself). At most ``depth`` batches wait: host memory stays bounded by a few batches."""

    def __init__(self, out: AtomicFile, depth: int = 2):
        self.out = out
        self.error: BaseException | None = None
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._work, name="toptune-cache-writer", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (item := self.q.get()) is not None:
            host, ready = item
            if self.error is None:
                try:
                    if ready is not None:
                        ready.synchronize()  # the non-blocking copy into ``host`` has landed
                    self.out.write(host.view(torch.uint8).numpy())
                except BaseException as e:  # noqa: BLE001 — re-raised in the building thread
                    self.error = e

    def put(self, rows: torch.Tensor) -> None:
        """Queue ``rows`` (N, D), on any device, to be appended in order."""
        if self.error is not None:
            raise self.error
        if rows.device.type == "cuda":
            host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
            host.copy_(rows, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
            self.q.put((host, ready))
        else:
            self.q.put((rows.contiguous(), None))

    def close(self) -> None:
        """Wait until every queued batch is written; raise what the thread met."""
        self.q.put(None)
        self.thread.join()
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
    job: ShardJob,
    directory: Path,
    dtype: torch.dtype,
    fp_key: str,
    batch_tokens: int,
    on_batch: Callable[[int], None] | None = None,
    block: int | None = None,
) -> dict:
    """Compute and write one shard of the states entering ``block`` (default: the first trainable block):
    rows, padding row, index, then its receipt; returns the receipt."""
    block = clf.first_trainable_block if block is None else block
    lengths = enc.lengths()[job.examples]  # (n,) longest first
    index = np.stack([job.examples, lengths, np.zeros_like(lengths)], axis=1)  # (n, 3): example, length, pooled
    dim = backbone(clf.model).config.hidden_size
    with AtomicFile(directory / files_of(job, fp_key)["hidden"]) as out:
        writer, i = _Writer(out), 0
        try:
            while i < len(job.examples):
                take = slice(i, i + max(1, batch_tokens // max(int(lengths[i]), 1)))
                b = rows_batch(enc, job.examples[take], clf.pad_token_id)
                index[take, 2] = pool_index(b["input_ids"], clf.pad_token_id).numpy()
                ids, mask = b["input_ids"].to(clf.device), b["attention_mask"].to(clf.device)
                with autocast(clf.device):
                    hidden = run_prefix(clf.model, ids, mask, block)  # (B, T, D)
                rows = torch.from_numpy(real_rows(lengths[take], ids.shape[1])).to(clf.device)
                writer.put(hidden.flatten(0, 1).index_select(0, rows).to(dtype))  # (Σ lengths, D), example by example
                i += len(lengths[take])
                if on_batch is not None:
                    on_batch(len(lengths[take]))
        finally:
            writer.close()
        out.write(torch.zeros(1, dim, dtype=dtype).view(torch.uint8).numpy())  # the padding row
        hidden_entry = out.commit()
    index_entry = write_index(directory / files_of(job, fp_key)["index"], index)
    return write_receipt(directory, job, fp_key, {"hidden": hidden_entry, "index": index_entry})

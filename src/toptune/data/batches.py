"""Padded token batches: the batch order (seeded) and the padding, gathered with numpy from a split's
flat token ids (:class:`toptune.data.tokens.Encoded`)."""

from __future__ import annotations

import numpy as np
import torch

from toptune.data.tokens import Encoded


def pad(flat: np.ndarray, lengths: np.ndarray, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows given end to end (``flat`` (Σ lengths,), ``lengths`` (B,)) right-padded to the longest:
    ``input_ids`` (B, T) int64 and ``attention_mask`` (B, T) int64, 1 on real tokens."""
    width = int(lengths.max()) if len(lengths) else 0
    mask = np.arange(width)[None, :] < lengths[:, None]  # (B, T)
    ids = np.full(mask.shape, pad_token_id, dtype=np.int64)
    ids[mask] = flat  # row-major: row 0's tokens, then row 1's, …
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def label_array(labels: np.ndarray) -> np.ndarray:
    """Stored labels as the loss takes them: class indices (N,) int64 (single-label), else float32
    (multi-hot (N, C), or regression values (N,))."""
    a = np.asarray(labels)
    if a.ndim == 1 and np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64)
    return a.astype(np.float32)


def rows_batch(enc: Encoded, idx: np.ndarray, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of ``enc`` as a batch: ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels`` (B, …)
    (:func:`label_array`)."""
    ids, mask = pad(*enc.gather(idx), pad_token_id)
    labels = torch.from_numpy(label_array(enc.labels[np.asarray(idx, dtype=np.int64)]))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_indices(n: int, batch_size: int, shuffle: bool, seed: int) -> list[np.ndarray]:
    """Example indices per batch; a seeded permutation when ``shuffle`` (one seed per epoch)."""
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def batches(enc: Encoded, batch_size: int, pad_token_id: int, shuffle: bool = False, seed: int = 0):
    """Yield padded batches of ``enc``."""
    for idx in batch_indices(len(enc), batch_size, shuffle, seed):
        yield rows_batch(enc, idx, pad_token_id)

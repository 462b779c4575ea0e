"""Padded token batches: the batch order (seeded) and the collate."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from toptune.data.tokens import Encoded


def collate(input_ids: list[list[int]], labels: list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch.

    Returns ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels`` (B,)."""
    rows = [torch.tensor(x, dtype=torch.long) for x in input_ids]
    ids = pad_sequence(rows, batch_first=True, padding_value=pad_token_id)  # (B, T)
    mask = pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)  # (B, T): 1 on real tokens
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(labels, dtype=torch.long)}


def batch_indices(n: int, batch_size: int, shuffle: bool, seed: int) -> list[np.ndarray]:
    """Example indices per batch; a seeded permutation when ``shuffle`` (one seed per epoch)."""
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def batches(enc: Encoded, batch_size: int, pad_token_id: int, shuffle: bool = False, seed: int = 0):
    """Yield collated batches of ``enc``."""
    for idx in batch_indices(len(enc), batch_size, shuffle, seed):
        yield collate([enc.input_ids[i] for i in idx], [enc.labels[i] for i in idx], pad_token_id)

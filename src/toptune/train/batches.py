"""A split's batches and one pass over them, the two abstractions every prefix mode shares.

A split's :class:`Batches` holds each epoch's global batches as example indices and a loader that turns
indices into tensors; ``logits_fn(batch)`` turns a batch into logits (B, C). Live modes feed token
batches through :func:`toptune.prefix.forward.forward_logits`; the cache feeds stored prefix outputs
through :func:`toptune.prefix.forward.run_top`. Validation splits whole batches round robin over the
processes and gathers the logits, so every process sees the one-process metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from toptune.data.batches import batch_indices, rows_batch
from toptune.data.tokens import Encoded
from toptune.prefix.forward import forward_logits
from toptune.train import distributed
from toptune.train.device import autocast, to_device
from toptune.train.history import EvalResult

Batch = dict[str, Tensor]
LogitsFn = Callable[[Batch], Tensor]


def live_logits(model: nn.Module, first_trainable_block: int, mode: str) -> LogitsFn:
    """Logits of token batches, with the prefix run per ``mode`` (``no_grad`` / ``autograd``)."""
    return lambda b: forward_logits(model, b["input_ids"], b["attention_mask"], first_trainable_block, mode)


@dataclass
class Batches:
    """One split's batches: indices first, tensors on demand (so processes shard the indices)."""

    n: int
    """Examples in the split."""
    order: Callable[[int], list[np.ndarray]]
    """``epoch ->`` the global batches' example indices, in order (reshuffled per epoch when training)."""
    load: Callable[[Iterable[np.ndarray]], Iterator[Batch]]
    """Index arrays → batches of tensors on the device, one per array, in order (may read ahead)."""


def live_batches(
    enc: Encoded, batch_size: int, pad_token_id: int, shuffle: bool, seed: int, device: torch.device
) -> Batches:
    """Token batches of ``enc``, reshuffled per epoch with seed ``seed + epoch`` when ``shuffle``."""

    def load(indices: Iterable[np.ndarray]) -> Iterator[Batch]:
        for idx in indices:
            b = rows_batch(enc, idx, pad_token_id)
            yield {k: to_device(v, device) for k, v in b.items()}

    return Batches(len(enc), lambda epoch: batch_indices(len(enc), batch_size, shuffle, seed + epoch), load)


@torch.no_grad()
def run_eval(model: nn.Module, data: Iterable[Batch], logits_fn: LogitsFn, device: torch.device) -> EvalResult:
    """Logits of every example of ``data``, in order, with the model in eval mode (this process only)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    with autocast(device):
        for b in data:
            logits.append(logits_fn(b).float().cpu())
            labels.append(b["labels"].cpu())
    model.train(was_training)
    if not logits:
        return EvalResult(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
    return EvalResult(torch.cat(logits).numpy(), torch.cat(labels).numpy())


def eval_split(model: nn.Module, data: Batches, logits_fn: LogitsFn, device: torch.device) -> EvalResult:
    """Logits of every example of ``data`` in split order, on every process: each process runs whole
    batches round robin (a batch's logits are then those one process computes) and they gather."""
    order = data.order(0)
    mine = [order[i] for i in range(len(order)) if distributed.owns(i)]
    ev = run_eval(model, data.load(mine), logits_fn, device)
    idx = np.concatenate(mine) if mine else np.zeros(0, np.int64)
    parts = [p for p in distributed.all_gather((idx, ev.logits, ev.labels)) if len(p[0])]
    if not parts:
        return EvalResult(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
    logits = np.empty((data.n, parts[0][1].shape[1]), np.float32)
    labels = np.empty((data.n, *parts[0][2].shape[1:]), parts[0][2].dtype)  # (N,) classes or values, (N, C) multi-hot
    for i, lg, lb in parts:
        logits[i], labels[i] = lg, lb
    return EvalResult(logits, labels)

"""Each block's pooled output of the base model, for every row of a split: one no_grad pass, batch by batch.

Block ``i``'s entry is the residual stream *after* block ``i`` at the token the classification head pools
at (the rightmost non-pad token, :func:`toptune.prefix.forward.pool_index`). Forward hooks on the decoder
blocks take it, rather than ``output_hidden_states``: the hooks keep one (B, D) row per block and batch
instead of every block's (B, T, D) states, and every entry is before the final norm — the stock
``hidden_states[-1]`` is the normed output (transformers ties it to ``last_hidden_state``), so its last
entry would differ in kind from the others. The last block's entry is thus the final norm's input:
``score(norm(entry))`` is the classifier's logits (``tests/probe/test_probe.py`` holds it to 1e-5).

Memory: only the (rows, blocks, hidden) float32 array, filled batch by batch — never rows × tokens.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from toptune.data.tokens import Encoded
from toptune.model.load import backbone
from toptune.prefix.forward import pool_index, run_prefix
from toptune.train.batches import live_batches
from toptune.train.device import autocast


def probe_rows(n: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Row indices of a split of ``n`` rows to probe: all of them, or a sorted sample of ``max_rows`` under ``seed``."""
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


def pooled_by_block(
    model: nn.Module,
    enc: Encoded,
    rows: np.ndarray,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    desc: str = "probe",
) -> np.ndarray:
    """(len(rows), blocks, hidden) float32: row ``rows[r]``'s output of block ``i`` at its pooled token is
    ``out[r, i]``. ``model`` is a classifier (or PEFT model) on ``device``; its head is not run."""
    inner = backbone(model)
    blocks = list(inner.layers)
    out = np.empty((len(rows), len(blocks), inner.config.hidden_size), np.float32)
    at: dict[str, Tensor] = {}  # the current batch's rows and pooled positions, read by the hooks
    done = 0

    def keep(i: int):
        def hook(_module: nn.Module, _args, output) -> None:
            hidden = output[0] if isinstance(output, tuple) else output  # (B, T, D): a tensor in transformers 5
            out[done : done + len(at["pooled"]), i] = hidden[at["rows"], at["pooled"]].float().cpu().numpy()

        return hook

    handles = [block.register_forward_hook(keep(i)) for i, block in enumerate(blocks)]
    batches = live_batches(enc, batch_size, inner.config.pad_token_id, False, 0, device)
    order = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(rows), desc=desc, unit="row", disable=not progress, mininterval=1.0) as bar:
            for b in batches.load(order):
                ids = b["input_ids"]  # (B, T)
                at["rows"] = torch.arange(ids.shape[0], device=ids.device)
                at["pooled"] = pool_index(ids, inner.config.pad_token_id)  # (B,)
                with autocast(device):
                    run_prefix(model, ids, b["attention_mask"], len(blocks))  # every block, no final norm, no_grad
                done += ids.shape[0]
                bar.update(ids.shape[0])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return out

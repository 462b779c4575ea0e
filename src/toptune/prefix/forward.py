"""The forward split: blocks below the first trainable one run under ``torch.no_grad()``, for every Qwen family.

The stock forward (``model(input_ids, attention_mask)``) records every block in the autograd graph as
soon as anything upstream requires grad (``enable_input_require_grads``, as gradient checkpointing
switches on, is enough), so the frozen prefix keeps its activations for a backward that never needs
them. Here the model's forward is split at block ``first_trainable_block`` (f below), on the model's own code:

    prefix view  blocks [0, f)   embed → blocks, no final norm; under no_grad, output detached (nothing saved)
    top view     blocks [f, L)   the boundary as ``inputs_embeds`` → blocks → final norm   (in the graph)
                 → pooled token → ``score``

Both views run the backbone's stock ``forward`` (:mod:`toptune.prefix.views`), so masks (full, sliding,
linear attention), rotary / M-RoPE positions and every block type come from transformers itself.
Pooling is done here, at the rightmost token that is not ``pad_token_id`` — the stock classifier's
rule, which it cannot apply to ``inputs_embeds`` (it would pool at position −1, wrong under right
padding). Tests hold the forward split to the stock logits and gradients for every family; before training, a
run checks it once more on its own base checkpoint and first batch
(:func:`toptune.prefix.selfcheck.check_forward_split`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from toptune.config import PREFIX_MODES  # noqa: F401 - re-exported: the modes the forward split runs
from toptune.model.load import backbone, score_head
from toptune.prefix.fast import fast_supported, run_top_fast
from toptune.prefix.views import block_view, run_view


def pool_index(input_ids: Tensor, pad_token_id: int | None) -> Tensor:
    """(B,) index of the rightmost token that is not padding, the stock classifier's pooling rule."""
    if pad_token_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
    return (positions * (input_ids != pad_token_id)).argmax(-1)


def run_prefix(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, first_trainable_block: int) -> Tensor:
    """Hidden states (B, T, D) entering block ``first_trainable_block``, computed without recording a graph."""
    inner = backbone(model)
    with torch.no_grad():
        hidden = run_view(
            block_view(inner, 0, first_trainable_block, final_norm=False), attention_mask, input_ids=input_ids
        )  # (B, T, D)
    # detach: even with enable_input_require_grads (which marks the embedding output as requiring
    # grad), the top blocks start a fresh graph here.
    return hidden.detach()


def run_between(model: nn.Module, hidden: Tensor, attention_mask: Tensor | None, start: int, stop: int) -> Tensor:
    """Hidden states (B, T, D) entering block ``stop`` from ``hidden`` entering block ``start``: frozen blocks
    run without recording a graph (a cache stored at a deeper boundary serving a run of fewer blocks).
    ``attention_mask`` None: nothing is padded."""
    if start == stop:
        return hidden
    with torch.no_grad():
        out = run_view(block_view(backbone(model), start, stop, final_norm=False), attention_mask, inputs_embeds=hidden)
    return out.detach()


def run_top(
    model: nn.Module,
    hidden: Tensor,
    attention_mask: Tensor | None,
    pooled: Tensor,
    first_trainable_block: int,
    fast: bool = False,
) -> Tensor:
    """Logits (B, C) from the state ``hidden`` (B, T, D) entering block ``first_trainable_block``; ``pooled``
    (B,) picks each example's token; ``attention_mask`` None: nothing is padded. ``fast`` (the cached
    epochs) runs Qwen2 / Qwen3 dense blocks through :mod:`toptune.prefix.fast`; every other case runs the
    top view's stock forward, so module hooks fire."""
    inner = backbone(model)
    if fast and fast_supported(inner) and first_trainable_block < len(inner.layers):
        return score_head(model)(run_top_fast(inner, hidden, attention_mask, pooled, first_trainable_block))
    out = run_view(
        block_view(inner, first_trainable_block, len(inner.layers), final_norm=True),
        attention_mask,
        inputs_embeds=hidden,
    )  # (B, T, D)
    return score_head(model)(out[torch.arange(out.shape[0], device=out.device), pooled])  # (B, C)


def stock_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The stock classifier's logits (B, C), the cache off (a sliced cache would break, and Gated DeltaNet
    gradients differ by ~3e-7 with it)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def forward_logits(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, first_trainable_block: int, mode: str = "no_grad"
) -> Tensor:
    """Classifier logits (B, C) with the prefix run per ``mode`` (``autograd`` = the stock forward)."""
    if mode == "autograd":
        return stock_logits(model, input_ids, attention_mask)
    inner = backbone(model)
    pooled = pool_index(input_ids, inner.config.pad_token_id)
    if first_trainable_block == 0:
        # No frozen prefix (K = L): the embedding starts the graph, as in the stock forward.
        out = run_view(block_view(inner, 0, len(inner.layers), final_norm=True), attention_mask, input_ids=input_ids)
        return score_head(model)(out[torch.arange(out.shape[0], device=out.device), pooled])
    hidden = run_prefix(model, input_ids, attention_mask, first_trainable_block)
    return run_top(model, hidden, attention_mask, pooled, first_trainable_block)

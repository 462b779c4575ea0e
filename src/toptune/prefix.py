"""Frozen-prefix execution: blocks below the first trainable one run under ``torch.no_grad()``.

The stock forward (``model(input_ids, attention_mask)``) records every block in the autograd graph
as soon as anything upstream requires grad (``enable_input_require_grads``, as gradient
checkpointing switches on, is enough), so the frozen prefix keeps its activations for a backward
that never needs them. Here the model's forward is split at block ``first`` (the lowest trainable):

    embed → blocks[0:first]            under no_grad, output detached   (prefix: nothing saved)
          → blocks[first:L] → norm → score at the pooled token            (suffix: in the graph)

The split reproduces the stock forward of transformers 5's ``Qwen{2,3}Model``: the same rotary
position embeddings (``position_ids = arange(T)``, whatever the padding), the same causal / sliding
masks from ``transformers.masking_utils``, and the same pooling at the rightmost token that is not
``pad_token_id``. Tests hold it to the stock logits and gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from toptune.model import backbone, score_head

PrefixMode = Literal["no_grad", "autograd", "cache"]
PREFIX_MODES = ("no_grad", "autograd", "cache")


@dataclass
class BlockInputs:
    """What every decoder block takes besides the hidden states; shared by all blocks of a batch."""

    masks: dict[str, Tensor | None]
    """Attention mask per layer type (``full_attention`` / ``sliding_attention``); None = plain causal."""
    position_embeddings: tuple[Tensor, Tensor]
    """Rotary (cos, sin), each (1, T, head_dim)."""
    position_ids: Tensor
    """(1, T) positions 0 … T-1, as the stock forward uses."""


def block_inputs(inner: nn.Module, hidden: Tensor, attention_mask: Tensor | None) -> BlockInputs:
    """Masks and rotary embeddings for hidden states ``hidden`` (B, T, D), as ``Qwen{2,3}Model`` builds them."""
    position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)  # (1, T)
    kwargs = dict(config=inner.config, inputs_embeds=hidden, attention_mask=attention_mask,
                  cache=None, position_ids=position_ids)
    masks = {"full_attention": create_causal_mask(**kwargs)}
    if "sliding_attention" in getattr(inner.config, "layer_types", ()):
        masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
    return BlockInputs(masks, inner.rotary_emb(hidden, position_ids), position_ids)


def run_blocks(inner: nn.Module, hidden: Tensor, inputs: BlockInputs, start: int, stop: int) -> Tensor:
    """Apply decoder blocks ``start … stop-1`` to ``hidden`` (B, T, D). Blocks return a tensor in transformers 5."""
    layer_types = inner.config.layer_types
    for i in range(start, stop):
        hidden = inner.layers[i](
            hidden,
            attention_mask=inputs.masks[layer_types[i]],
            position_embeddings=inputs.position_embeddings,
            position_ids=inputs.position_ids,
        )
    return hidden


def pool_index(input_ids: Tensor, pad_token_id: int | None) -> Tensor:
    """(B,) index of the rightmost token that is not padding, the stock classifier's pooling rule."""
    if pad_token_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
    return (positions * (input_ids != pad_token_id)).argmax(-1)


def run_prefix(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, first: int) -> Tensor:
    """Hidden states (B, T, D) entering block ``first``, computed without recording a graph."""
    inner = backbone(model)
    with torch.no_grad():
        hidden = inner.embed_tokens(input_ids)  # (B, T, D)
        if first > 0:
            hidden = run_blocks(inner, hidden, block_inputs(inner, hidden, attention_mask), 0, first)
    # detach: even with enable_input_require_grads (which marks the embedding output as requiring
    # grad), the suffix starts a fresh graph here.
    return hidden.detach()


def run_suffix(model: nn.Module, hidden: Tensor, attention_mask: Tensor, pooled: Tensor, first: int) -> Tensor:
    """Logits (B, C) from hidden states (B, T, D) entering block ``first``; pooled (B,) picks the token.

    Norm and score run on the pooled token only: both act per token, so this equals scoring all T
    tokens and then pooling, at 1/T of the cost.
    """
    inner = backbone(model)
    hidden = run_blocks(inner, hidden, block_inputs(inner, hidden, attention_mask), first, len(inner.layers))
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), pooled]  # (B, D)
    return score_head(model)(inner.norm(last))  # (B, C)


def forward_logits(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, first: int, mode: PrefixMode = "no_grad"
) -> Tensor:
    """Classifier logits (B, C) with the prefix run per ``mode`` (``autograd`` = the stock forward)."""
    if mode == "autograd":
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    inner = backbone(model)
    pooled = pool_index(input_ids, inner.config.pad_token_id)
    if first == 0:
        # No frozen prefix (K = L): the embedding is the graph's start, as in the stock forward.
        hidden = inner.embed_tokens(input_ids)
    else:
        hidden = run_prefix(model, input_ids, attention_mask, first)
    return run_suffix(model, hidden, attention_mask, pooled, first)

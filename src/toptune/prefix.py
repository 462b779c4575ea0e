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
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3.modeling_qwen3 import eager_attention_forward

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


def run_suffix(model: nn.Module, hidden: Tensor, attention_mask: Tensor, pooled: Tensor, first: int,
               pooled_last_block: bool = True) -> Tensor:
    """Logits (B, C) from hidden states (B, T, D) entering block ``first``; pooled (B,) picks the token.

    Norm and score run on the pooled token only: both act per token, so this equals scoring all T
    tokens and then pooling, at 1/T of the cost. With ``pooled_last_block`` the last block, too, is
    run for the pooled token only (:func:`last_block_at`): its keys and values need every token,
    its query, attention output and MLP only the pooled one.
    """
    inner = backbone(model)
    inputs = block_inputs(inner, hidden, attention_mask)
    n = len(inner.layers)
    if pooled_last_block and first < n and pooled_query_supported(inner):
        hidden = run_blocks(inner, hidden, inputs, first, n - 1)
        last = last_block_at(inner, hidden, inputs, pooled, n - 1)  # (B, D)
    else:
        hidden = run_blocks(inner, hidden, inputs, first, n)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), pooled]  # (B, D)
    return score_head(model)(inner.norm(last))  # (B, C)


def pooled_query_supported(inner: nn.Module) -> bool:
    """The single-query last block needs a per-query mask row: ``sdpa`` and ``eager`` attention build
    (B, 1, T, T) masks; flash / flex attention take other mask forms and use the full last block."""
    return getattr(inner.config, "_attn_implementation", "sdpa") in ("sdpa", "eager")


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def last_block_at(inner: nn.Module, hidden: Tensor, inputs: BlockInputs, pooled: Tensor, index: int) -> Tensor:
    """Output (B, D) of decoder block ``index`` at the pooled token only, from its input ``hidden`` (B, T, D).

    Nothing after the last attention mixes tokens, so for the last block only the pooled token's row
    matters: keys and values are projected for all T tokens, the query, attention, ``o_proj`` and
    MLP for one token per example. Step for step it is ``Qwen{2,3}DecoderLayer.forward`` (same
    submodules, LoRA included; the same mask row, rotary angles and attention function), at about
    a third of the block's work. Tests hold it to the full block.
    """
    layer = inner.layers[index]
    attn = layer.self_attn
    b, t, _ = hidden.shape
    rows = torch.arange(b, device=hidden.device)
    x = layer.input_layernorm(hidden)  # (B, T, D)
    xq = x[rows, pooled].unsqueeze(1)  # (B, 1, D)
    hd = attn.head_dim
    q = attn.q_proj(xq).view(b, 1, -1, hd)  # (B, 1, H, hd)
    k = attn.k_proj(x).view(b, t, -1, hd)  # (B, T, Hkv, hd)
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm per head on q and k
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, 1, hd), (B, Hkv, T, hd)
    v = attn.v_proj(x).view(b, t, -1, hd).transpose(1, 2)  # (B, Hkv, T, hd)
    cos, sin = inputs.position_embeddings  # (1, T, hd) each
    k = k * cos.unsqueeze(1) + _rotate_half(k) * sin.unsqueeze(1)
    cos_q, sin_q = cos[0, pooled].view(b, 1, 1, hd), sin[0, pooled].view(b, 1, 1, hd)  # angles at the pooled positions
    q = q * cos_q + _rotate_half(q) * sin_q
    mask = inputs.masks[inner.config.layer_types[index]]
    if mask is not None:
        mask = mask.expand(b, -1, -1, -1)[rows, :, pooled].unsqueeze(2)  # (B, 1, 1, T): the pooled query's row
    else:  # plain causal (no padding): the pooled query sees keys 0 … pooled
        keep = torch.arange(t, device=hidden.device) <= pooled[:, None]  # (B, T)
        if attn.sliding_window is not None:
            keep &= torch.arange(t, device=hidden.device) > (pooled[:, None] - attn.sliding_window)
        mask = keep.view(b, 1, 1, t)
        if inner.config._attn_implementation == "eager":
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, torch.finfo(q.dtype).min)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(inner.config._attn_implementation, eager_attention_forward)
    out, _ = attention(attn, q, k, v, mask, dropout=attn.attention_dropout if attn.training else 0.0,
                       scaling=attn.scaling, sliding_window=attn.sliding_window)  # (B, 1, H, hd)
    h = hidden[rows, pooled] + attn.o_proj(out.reshape(b, 1, -1))[:, 0]  # (B, D)
    return h + layer.mlp(layer.post_attention_layernorm(h))  # (B, D)


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

"""The fast path of the cached epochs for Qwen2 / Qwen3 dense blocks: fewer kernels, and the last block at
the pooled token only.

The stock view (:mod:`toptune.prefix.views`) runs every family; for the two dense families whose blocks
are attention + MLP, the cached training path runs them here instead, step for step as
``Qwen{2,3}DecoderLayer.forward`` (same submodules and parameters, LoRA included; the masks and rotary
angles from transformers' own functions), with each LoRA projection and RMSNorm in one kernel
(:mod:`toptune.prefix.kernels`) and the last block computed for the pooled token only: nothing after the
last attention mixes tokens, so its query, attention output and MLP are needed for one row per example
(keys and values still for all T). Tests hold it to the stock forward's logits and gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.masking_utils import (
    create_causal_mask,
    create_sliding_window_causal_mask,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3Attention,
    Qwen3DecoderLayer,
    eager_attention_forward,
    rotate_half,
)

from toptune.model.load import Decoder
from toptune.prefix.kernels import lora_linear, mlp, rms_norm

FAST_MODEL_TYPES = ("qwen2", "qwen3")


@dataclass
class BlockInputs:
    """What every decoder block takes besides the hidden states; shared by all blocks of a batch."""

    masks: dict[str, Tensor | None]
    """Attention mask per layer type (``full_attention`` / ``sliding_attention``); None = plain causal."""
    position_embeddings: tuple[Tensor, Tensor]
    """Rotary (cos, sin), each (1, T, head_dim)."""
    position_ids: Tensor
    """(1, T) positions 0 … T-1, as the stock forward uses."""


def _block(inner: Decoder, index: int) -> Qwen2DecoderLayer | Qwen3DecoderLayer:
    """Decoder block ``index``: a Qwen2 or Qwen3 dense block, the two that :func:`fast_supported` lets in."""
    layer = inner.layers[index]
    assert isinstance(layer, (Qwen2DecoderLayer, Qwen3DecoderLayer)), type(layer)
    return layer


def block_inputs(inner: Decoder, hidden: Tensor, attention_mask: Tensor | None) -> BlockInputs:
    """Masks and rotary embeddings for hidden states ``hidden`` (B, T, D), as ``Qwen{2,3}Model`` builds them.

    ``attention_mask`` None means no padding (the caller knows it on the host): under SDPA the full
    attention's mask is then None (``is_causal``). A given mask is taken as padded and built as it is.
    Neither case asks the device anything: transformers' own checks (is the mask all ones? are the
    positions packed sequences?) each read a device tensor, which waits for the device every step;
    the positions are 0 … T−1 here, never packed, so they are not handed to the mask functions."""
    position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)  # (1, T)
    kwargs = dict(
        config=inner.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        cache=None,
        allow_is_causal_skip=attention_mask is None,
    )
    masks = {"full_attention": create_causal_mask(**kwargs)}
    if "sliding_attention" in getattr(inner.config, "layer_types", ()):
        masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
    return BlockInputs(masks, inner.rotary_emb(hidden, position_ids), position_ids)


def last_block_at(inner: Decoder, hidden: Tensor, inputs: BlockInputs, pooled: Tensor, index: int) -> Tensor:
    """Output (B, D) of decoder block ``index`` at the pooled token only, from its input ``hidden`` (B, T, D).

    Nothing after the last attention mixes tokens, so for the last block only the pooled token's row
    matters: keys and values are projected for all T tokens, the query, attention, ``o_proj`` and
    MLP for one token per example. Step for step it is ``Qwen{2,3}DecoderLayer.forward`` (same
    submodules, LoRA included; the same mask row, rotary angles and attention function), at about
    a third of the block's work. Tests hold it to the full block.
    """
    layer = _block(inner, index)
    attn = layer.self_attn
    b, t, _ = hidden.shape
    rows = torch.arange(b, device=hidden.device)
    x = rms_norm(layer.input_layernorm, hidden)  # (B, T, D)
    xq = x[rows, pooled].unsqueeze(1)  # (B, 1, D)
    hd = attn.head_dim
    q = lora_linear(attn.q_proj, xq).view(b, 1, -1, hd)  # (B, 1, H, hd)
    k = lora_linear(attn.k_proj, x).view(b, t, -1, hd)  # (B, T, Hkv, hd)
    if isinstance(attn, Qwen3Attention):  # Qwen3: RMSNorm per head on q and k
        q, k = rms_norm(attn.q_norm, q), rms_norm(attn.k_norm, k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, 1, hd), (B, Hkv, T, hd)
    v = lora_linear(attn.v_proj, x).view(b, t, -1, hd).transpose(1, 2)  # (B, Hkv, T, hd)
    cos, sin = inputs.position_embeddings  # (1, T, hd) each
    k = k * cos.unsqueeze(1) + rotate_half(k) * sin.unsqueeze(1)
    cos_q, sin_q = cos[0, pooled].view(b, 1, 1, hd), sin[0, pooled].view(b, 1, 1, hd)  # angles at the pooled positions
    q = q * cos_q + rotate_half(q) * sin_q
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
    out, _ = attention(
        attn,
        q,
        k,
        v,
        mask,
        dropout=attn.attention_dropout if attn.training else 0.0,
        scaling=attn.scaling,
        sliding_window=attn.sliding_window,
    )  # (B, 1, H, hd)
    h = hidden[rows, pooled] + lora_linear(attn.o_proj, out.reshape(b, -1))  # (B, D)
    y = rms_norm(layer.post_attention_layernorm, h)
    return h + mlp(layer.mlp, y)  # (B, D)


def fast_supported(inner: Decoder) -> bool:
    """Qwen2 / Qwen3 dense blocks under the attention functions whose (B, 1, T, T) masks ``block_inputs``
    builds (``sdpa``, ``eager``); every other family, and flash / flex attention, take the stock view."""
    return inner.config.model_type in FAST_MODEL_TYPES and getattr(inner.config, "_attn_implementation", "sdpa") in (
        "sdpa",
        "eager",
    )


def fused_block(inner: Decoder, hidden: Tensor, inputs: BlockInputs, index: int) -> Tensor:
    """Decoder block ``index`` on ``hidden`` (B, T, D), as ``Qwen{2,3}DecoderLayer.forward`` computes it."""
    layer = _block(inner, index)
    attn = layer.self_attn
    b, t, _ = hidden.shape
    hd = attn.head_dim
    x = rms_norm(layer.input_layernorm, hidden)  # (B, T, D)
    q = lora_linear(attn.q_proj, x).view(b, t, -1, hd)  # (B, T, H, hd)
    k = lora_linear(attn.k_proj, x).view(b, t, -1, hd)  # (B, T, Hkv, hd)
    v = lora_linear(attn.v_proj, x).view(b, t, -1, hd).transpose(1, 2)  # (B, Hkv, T, hd)
    if isinstance(attn, Qwen3Attention):
        q, k = rms_norm(attn.q_norm, q), rms_norm(attn.k_norm, k)
    cos, sin = (e.unsqueeze(1) for e in inputs.position_embeddings)  # (1, 1, T, hd)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(inner.config._attn_implementation, eager_attention_forward)
    out, _ = attention(
        attn,
        q,
        k,
        v,
        inputs.masks[inner.config.layer_types[index]],
        dropout=attn.attention_dropout if attn.training else 0.0,
        scaling=attn.scaling,
        sliding_window=attn.sliding_window,
    )  # (B, T, H, hd)
    h = hidden + lora_linear(attn.o_proj, out.reshape(b, t, -1))  # (B, T, D)
    return h + mlp(layer.mlp, rms_norm(layer.post_attention_layernorm, h))


def run_top_fast(
    inner: Decoder, hidden: Tensor, attention_mask: Tensor | None, pooled: Tensor, first_trainable_block: int
) -> Tensor:
    """Final-normed hidden state (B, D) at the pooled tokens, from the state ``hidden`` (B, T, D) entering
    block ``first_trainable_block``: blocks fused, the last one at the pooled token only."""
    inputs = block_inputs(inner, hidden, attention_mask)
    last = len(inner.layers) - 1
    for i in range(first_trainable_block, last):
        hidden = fused_block(inner, hidden, inputs, i)
    return inner.norm(last_block_at(inner, hidden, inputs, pooled, last))  # (B, D)

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
               pooled_last_block: bool = False, fused: bool = False) -> Tensor:
    """Logits (B, C) from hidden states (B, T, D) entering block ``first``; pooled (B,) picks the token.

    Norm and score run on the pooled token only: both act per token, so this equals scoring all T
    tokens and then pooling, at 1/T of the cost. With ``pooled_last_block`` the last block, too, is
    run for the pooled token only (:func:`last_block_at`): its keys and values need every token,
    its query, attention output and MLP only the pooled one. With ``fused`` the blocks run as
    :func:`fused_block` (the same arithmetic in fewer kernels). Both are off by default (the live
    modes call every block as a module, so module hooks fire); the cache's training path turns them on.
    """
    inner = backbone(model)
    inputs = block_inputs(inner, hidden, attention_mask)
    n = len(inner.layers)
    pooled_ok = pooled_last_block and first < n and pooled_query_supported(inner)
    stop = n - 1 if pooled_ok else n
    if fused and fused_supported(inner):
        for i in range(first, stop):
            hidden = fused_block(inner, hidden, inputs, i)
    else:
        hidden = run_blocks(inner, hidden, inputs, first, stop)
    if pooled_ok:
        last = last_block_at(inner, hidden, inputs, pooled, n - 1, fused=fused and fused_supported(inner))  # (B, D)
    else:
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), pooled]  # (B, D)
    return score_head(model)(inner.norm(last))  # (B, C)


def pooled_query_supported(inner: nn.Module) -> bool:
    """The single-query last block needs a per-query mask row: ``sdpa`` and ``eager`` attention build
    (B, 1, T, T) masks; flash / flex attention take other mask forms and use the full last block."""
    return getattr(inner.config, "_attn_implementation", "sdpa") in ("sdpa", "eager")


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def last_block_at(inner: nn.Module, hidden: Tensor, inputs: BlockInputs, pooled: Tensor, index: int,
                  fused: bool = False) -> Tensor:
    """Output (B, D) of decoder block ``index`` at the pooled token only, from its input ``hidden`` (B, T, D).

    Nothing after the last attention mixes tokens, so for the last block only the pooled token's row
    matters: keys and values are projected for all T tokens, the query, attention, ``o_proj`` and
    MLP for one token per example. Step for step it is ``Qwen{2,3}DecoderLayer.forward`` (same
    submodules, LoRA included; the same mask row, rotary angles and attention function), at about
    a third of the block's work. Tests hold it to the full block.
    """
    layer = inner.layers[index]
    attn = layer.self_attn
    linear, norm = (lora_linear, rms_norm) if fused else (_call, _call)
    b, t, _ = hidden.shape
    rows = torch.arange(b, device=hidden.device)
    x = norm(layer.input_layernorm, hidden)  # (B, T, D)
    xq = x[rows, pooled].unsqueeze(1)  # (B, 1, D)
    hd = attn.head_dim
    q = linear(attn.q_proj, xq).view(b, 1, -1, hd)  # (B, 1, H, hd)
    k = linear(attn.k_proj, x).view(b, t, -1, hd)  # (B, T, Hkv, hd)
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm per head on q and k
        q, k = norm(attn.q_norm, q), norm(attn.k_norm, k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, 1, hd), (B, Hkv, T, hd)
    v = linear(attn.v_proj, x).view(b, t, -1, hd).transpose(1, 2)  # (B, Hkv, T, hd)
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
    h = hidden[rows, pooled] + linear(attn.o_proj, out.reshape(b, -1))  # (B, D)
    y = norm(layer.post_attention_layernorm, h)
    if fused:
        return h + _mlp(layer.mlp, y)
    return h + layer.mlp(y)  # (B, D)


# --------------------------------------------------------------------------------------------------
# Fused blocks: the decoder block's arithmetic with fewer kernels, for the cached training path.
#
# On small batches (16 examples × ~20 tokens) a block's time goes less to its matmuls than to the
# ~100 kernels around them: each LoRA projection is 5 modules and 5 kernels forward (base, dropout,
# A, B, scale, add) and more backward; each RMSNorm is 6. Here a LoRA projection is one autograd
# function (3 matmuls forward, 5 backward) over the same PEFT parameters, and RMSNorm is torch's
# fused ``rms_norm``. Anything unusual (DoRA, several active adapters, live LoRA dropout, merged
# weights, a non-Qwen block) falls back to the module call. Tests hold it to the stock block.
# --------------------------------------------------------------------------------------------------


def _call(module: nn.Module, x: Tensor) -> Tensor:
    return module(x)


class _LoraLinear(torch.autograd.Function):
    """``y = x Wᵀ + b + s·(x Aᵀ) Bᵀ`` with ``W``, ``b`` frozen; gradients for ``x`` (if needed), ``A``, ``B``."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale):  # x (N, in)
        h = x @ lora_a.t()  # (N, r)
        y = torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()  # (N, out)
        y.addmm_(h, lora_b.t(), alpha=scale)
        ctx.save_for_backward(x, h, weight, lora_a, lora_b)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, grad):  # grad (N, out)
        x, h, weight, lora_a, lora_b = ctx.saved_tensors
        grad_b = (grad.t() @ h).mul_(ctx.scale)  # (out, r)
        grad_h = (grad @ lora_b).mul_(ctx.scale)  # (N, r)
        grad_a = grad_h.t() @ x  # (r, in)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight  # (N, in)
            grad_x.addmm_(grad_h, lora_a)
        return grad_x, None, None, grad_a, grad_b, None


def _lora_parts(module: nn.Module):
    """(W, b, A, B, scale) of a PEFT LoRA ``Linear`` with one plain active adapter; None otherwise."""
    if not hasattr(module, "lora_A") or not hasattr(module, "base_layer"):
        return None
    active = module.active_adapters
    if module.disable_adapters or module.merged or len(active) != 1:
        return None
    name = active[0]
    if name not in module.lora_A or name in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(name):
        return None
    dropout = module.lora_dropout[name]
    if module.training and not isinstance(dropout, nn.Identity) and getattr(dropout, "p", 0) > 0:
        return None
    base, a, b = module.base_layer, module.lora_A[name], module.lora_B[name]
    if not isinstance(base, nn.Linear) or base.weight.requires_grad or getattr(b, "bias", None) is not None:
        return None
    if base.bias is not None and base.bias.requires_grad:  # a trained bias needs its own gradient
        return None
    if not (base.weight.dtype == a.weight.dtype == b.weight.dtype):
        return None
    return base.weight, base.bias, a.weight, b.weight, float(module.scaling[name])


def lora_linear(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` for a PEFT LoRA linear (or a plain frozen ``nn.Linear``), in one autograd node."""
    parts = _lora_parts(module)
    if parts is None:
        return module(x)
    weight, bias, a, b, scale = parts
    if x.dtype != weight.dtype:  # autocast (CUDA bf16): let the module's own path handle dtypes
        return module(x)
    y = _LoraLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias, a, b, scale)
    return y.view(*x.shape[:-1], y.shape[-1])


def rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """A Qwen RMSNorm (``weight``, ``variance_epsilon``) as torch's fused ``rms_norm`` (float32 in, as
    the module computes it)."""
    if x.dtype != torch.float32 or not hasattr(norm, "variance_epsilon"):
        return norm(x)
    return nn.functional.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


def _mlp(mlp: nn.Module, y: Tensor) -> Tensor:
    return lora_linear(mlp.down_proj, mlp.act_fn(lora_linear(mlp.gate_proj, y)) * lora_linear(mlp.up_proj, y))


def fused_supported(inner: nn.Module) -> bool:
    """Qwen2 / Qwen3 blocks with the attention functions whose masks ``block_inputs`` builds."""
    layer = inner.layers[0]
    return (pooled_query_supported(inner) and all(hasattr(layer, a) for a in ("self_attn", "mlp", "input_layernorm",
            "post_attention_layernorm")) and all(hasattr(layer.mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")))


def fused_block(inner: nn.Module, hidden: Tensor, inputs: BlockInputs, index: int) -> Tensor:
    """Decoder block ``index`` on ``hidden`` (B, T, D), as ``Qwen{2,3}DecoderLayer.forward`` computes it."""
    layer = inner.layers[index]
    attn = layer.self_attn
    b, t, _ = hidden.shape
    hd = attn.head_dim
    x = rms_norm(layer.input_layernorm, hidden)  # (B, T, D)
    q = lora_linear(attn.q_proj, x).view(b, t, -1, hd)  # (B, T, H, hd)
    k = lora_linear(attn.k_proj, x).view(b, t, -1, hd)  # (B, T, Hkv, hd)
    v = lora_linear(attn.v_proj, x).view(b, t, -1, hd).transpose(1, 2)  # (B, Hkv, T, hd)
    if hasattr(attn, "q_norm"):
        q, k = rms_norm(attn.q_norm, q), rms_norm(attn.k_norm, k)
    cos, sin = (e.unsqueeze(1) for e in inputs.position_embeddings)  # (1, 1, T, hd)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(inner.config._attn_implementation, eager_attention_forward)
    out, _ = attention(attn, q, k, v, inputs.masks[inner.config.layer_types[index]],
                       dropout=attn.attention_dropout if attn.training else 0.0, scaling=attn.scaling,
                       sliding_window=attn.sliding_window)  # (B, T, H, hd)
    h = hidden + lora_linear(attn.o_proj, out.reshape(b, t, -1))  # (B, T, D)
    return h + _mlp(layer.mlp, rms_norm(layer.post_attention_layernorm, h))


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

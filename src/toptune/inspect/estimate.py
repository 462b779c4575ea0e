"""Analytic estimate of the top K blocks' saved bytes from shapes alone, to plan a run before renting the GPU.

It covers the block kind of Qwen2 / Qwen3 dense checkpoints — attention (sdpa) + gated MLP, LoRA on all
seven projections, frozen base weights — and says so: for Gated DeltaNet (linear attention) blocks and
MoE blocks (routed experts: the bytes depend on the routing), the report gives the measurement only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from toptune.model.load import backbone


@dataclass(frozen=True)
class BlockShape:
    """What the estimate needs to know of a model and a batch."""

    batch: int
    """B, examples in the batch."""
    length: int
    """T, padded tokens per example."""
    hidden: int
    """D."""
    heads: int
    """Query heads H."""
    kv_heads: int
    """Key/value heads."""
    head_dim: int
    """Per-head width."""
    intermediate: int
    """MLP width I."""
    lora_r: int
    """LoRA rank on every projection (0 = no adapters)."""
    qk_norm: bool
    """Qwen3's per-head q/k RMSNorm (Qwen2 has none)."""
    padded: bool = True
    """The batch has padding, so sdpa gets (and keeps) a float mask."""
    dtype_bytes: int = 4
    """Bytes per activation element (4 fp32, 2 bf16)."""


def block_saved_bytes(s: BlockShape, query_tokens: int | None = None, input_requires_grad: bool = True) -> int:
    """Expected bytes one trainable decoder block saves for backward (LoRA on q/k/v/o/gate/up/down,
    frozen base weights, sdpa attention), read off the op list of ``Qwen{2,3}DecoderLayer``
    (N = B·T tokens, e = bytes per element; RMSNorm works in fp32):

    - ``input_layernorm`` keeps its fp32 input (N·D) and per-token rsqrt (N) — only when the block's
      input requires grad: the first block after a no_grad prefix or a cache gets a plain tensor;
    - LoRA keeps ``lora_A``'s input (q/k/v share the normalised x: one N·D) and each rank-r middle
      (N·r per projection); frozen base linears keep only their weight, a parameter, not counted;
    - Qwen3's q/k norms keep q (N·H·hd) and k (N·Hkv·hd), fp32, plus an rsqrt per head;
    - sdpa keeps q, k, v, its output (which ``o_proj``'s LoRA reuses) and the per-row log-sum-exp
      (B·H·T, fp32); with padding also its float mask (B·T·T). k and v are kept repeated to H heads
      when transformers repeats them (a padded batch, T queries); at their Hkv heads when it lets sdpa
      do grouped-query attention (no mask) or packs the query heads instead (one query per example);
    - ``post_attention_layernorm`` as above; the MLP keeps the norm output once (gate/up share it),
      gate and up outputs, SiLU's output and the product fed to ``down_proj``: 4·N·I.

    ``query_tokens``: when only that many tokens per example need the block's output (the last block
    in the pooled path: 1), the query side — q, attention output, ``o_proj``, norm, MLP — shrinks to
    those rows; keys and values still cover all T tokens.
    """
    b, t, d, e, r = s.batch, s.length, s.hidden, s.dtype_bytes, s.lora_r
    n = b * t  # tokens whose keys / values are needed
    q = b * (query_tokens or t)  # tokens whose outputs are needed
    dq, dkv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    fp32 = 4
    total = (n * d * fp32 + n * fp32) if input_requires_grad else 0  # input_layernorm
    total += (n * d * e if r else 0) + (q + 2 * n) * r * e  # lora_A input (shared), q/k/v middles
    if s.qk_norm:
        total += q * dq * fp32 + q * s.heads * fp32  # q_norm
        total += n * dkv * fp32 + n * s.kv_heads * fp32  # k_norm
    one_query = query_tokens == 1
    kv = dq if (s.padded and not one_query) else dkv  # k / v width sdpa keeps
    total += (q * dq + 2 * n * kv) * e  # sdpa: q, k, v
    total += q * dq * e + q * s.heads * fp32  # sdpa: output, log-sum-exp
    if s.padded:
        total += q * t * e  # sdpa: float mask rows
    elif one_query:
        total += q * t  # the pooled row's bool mask
    total += q * r * e  # o_proj middle
    total += q * d * fp32 + q * fp32  # post_attention_layernorm
    total += (q * d * e if r else 0) + 3 * q * r * e  # MLP lora_A input, 3 middles
    total += 4 * q * s.intermediate * e  # gate, up, SiLU(gate), product
    return int(total)


def estimate_top_k(s: BlockShape, num_trainable: int, pooled_last_block: bool) -> int:
    """Expected saved bytes of the top ``num_trainable`` blocks (K) when they are fed a plain tensor (no_grad
    prefix or cache): the lowest of them keeps no input, the last one works on the pooled rows only when
    ``pooled_last_block`` (the cache's path); rotary cos/sin (2·T·hd, fp32) are kept once, shared."""
    if num_trainable <= 0:
        return 0
    rope = 2 * s.length * s.head_dim * 4
    if num_trainable == 1:
        return rope + block_saved_bytes(s, 1 if pooled_last_block else None, input_requires_grad=False)
    lowest = block_saved_bytes(s, input_requires_grad=False)
    last = block_saved_bytes(s, 1 if pooled_last_block else None)
    return rope + lowest + (num_trainable - 2) * block_saved_bytes(s) + last


ESTIMATE_COVERS = ("qwen2", "qwen3")
"""Model types whose blocks the estimate models: attention (sdpa) + gated MLP."""
COVERAGE = (
    "attention (sdpa) + gated MLP blocks of Qwen2 / Qwen3 dense checkpoints, LoRA on the seven "
    "projections; not Gated DeltaNet (linear attention) or MoE blocks, which are measured only"
)


def shape_of(model: nn.Module, batch: int, length: int, lora_r: int, padded: bool = True) -> BlockShape | None:
    """The ``BlockShape`` of a Qwen classifier for a batch of ``batch`` × ``length`` tokens; None for a family
    whose blocks the estimate does not model (``ESTIMATE_COVERS``)."""
    c = backbone(model).config
    if c.model_type not in ESTIMATE_COVERS:
        return None
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    dtype = next(model.parameters()).dtype
    return BlockShape(
        batch,
        length,
        c.hidden_size,
        heads,
        c.num_key_value_heads,
        head_dim,
        c.intermediate_size,
        lora_r,
        c.model_type == "qwen3",
        padded,
        2 if dtype in (torch.bfloat16, torch.float16) else 4,
    )


def estimate_report(report: dict, shape: BlockShape | None) -> dict:
    """Analytic top-K saved bytes beside the measured ones, for the no_grad and cached modes; for a family
    the estimate does not cover, the reason only."""
    if shape is None:
        return {"covers": COVERAGE, "skipped": f"{report['model']['model_type']} blocks are not modelled"}
    trainable = [f"layer.{i}" for i in report["model"]["trainable_layers"]]
    out: dict = {"covers": COVERAGE, "shape": dataclasses.asdict(shape), "blocks": trainable}
    # no_grad runs the last block over every token; the cache runs it at the pooled rows only.
    for mode, pooled in (("topk_no_grad", False), ("topk_cached", True)):
        m = report["modes"].get(mode, {})
        if "saved_bytes_by_block" in m:
            expected = estimate_top_k(shape, len(trainable), pooled_last_block=pooled)
            measured = sum(m["saved_bytes_by_block"].get(b, 0) for b in trainable)
            out[mode] = {
                "top_k_expected_bytes": expected,
                "top_k_measured_bytes": measured,
                "measured_over_estimated": measured / expected,
                "pooled_last_block": pooled,
            }
    return out

"""LoRA projections and RMSNorms in fewer kernels, over the same PEFT parameters (the fast path's parts).

On small batches (16 examples × ~20 tokens) a block's time goes less to its matmuls than to the ~100
kernels around them: each LoRA projection is 5 modules and 5 kernels forward (base, dropout, A, B, scale,
add) and more backward; each RMSNorm is 6. Here a LoRA projection is one autograd function (3 matmuls
forward, 5 backward) and RMSNorm is torch's fused ``rms_norm``. Anything unusual (DoRA, several active
adapters, live LoRA dropout, merged weights, an input in another dtype than the base weight, a trained
base bias) falls back to the module call. Tests hold it to the module.

bf16 base weights (CUDA under ``model.dtype: auto``, or ``bfloat16`` anywhere) run here too. The LoRA
weights stay fp32 parameters, the masters AdamW updates (its state, checkpoints and the bundle stay
fp32, and torch's fused AdamW takes them as they are); each projection casts its A and B to bf16 as it
runs. Each LoRA weight enters one projection once per step, so that is one cast per step, of r × in
elements against the (N × in × r) product. Their gradients come back in fp32. This is what PEFT computes
under CUDA autocast (which casts per matmul), without PEFT's fp32 copy of the input per projection: the
saved input is the bf16 tensor itself, one for q/k/v and one for gate/up (autograd saves a reference).
RMSNorm in bf16 is :class:`_RmsNorm`: the stock module's arithmetic forward (fp32 inside, rounded where
it rounds), saving the bf16 input and the fp32 ``rstd`` (B·T × 1) where the stock module saves two
fp32 copies of its input.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import Tensor, nn
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP


class _LoraLinear(torch.autograd.Function):
    """``y = x Wᵀ + b + s·(x Aᵀ) Bᵀ`` with ``W``, ``b`` frozen; gradients for ``x`` (if needed), ``A``, ``B``.

    Runs in ``x``'s dtype (the base weight's); ``A``, ``B`` (fp32 masters under bf16 weights) are cast to
    it and their gradients returned in their own dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale):  # x (N, in), in the base weight's dtype
        ctx.master = lora_a.dtype
        lora_a, lora_b = lora_a.to(x.dtype), lora_b.to(x.dtype)  # (r, in), (out, r): a no-op when dtypes agree
        h = x @ lora_a.t()  # (N, r)
        y = torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()  # (N, out)
        y.addmm_(h, lora_b.t(), alpha=scale)
        ctx.save_for_backward(x, h, weight, lora_a, lora_b)  # x: the caller's tensor, shared by q/k/v (gate/up)
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
        return grad_x, None, None, grad_a.to(ctx.master), grad_b.to(ctx.master), None


class _RmsNorm(torch.autograd.Function):
    """A frozen-weight RMSNorm over the last dimension of a bf16 (or fp16) ``x``: forward op for op as
    the Qwen module (``w · (x₃₂ · rstd)`` rounded to ``x``'s dtype, then scaled), saving ``x`` and the
    fp32 ``rstd`` only; backward in fp32, ``dx = rstd · (g − n · mean(g · n))`` with ``g = dy · w`` and
    ``n = x₃₂ · rstd``, rounded to ``x``'s dtype at the end, as the stock graph's last cast does."""

    @staticmethod
    def forward(ctx, x, weight, eps):  # x (..., D), weight (D,)
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1) fp32
        ctx.save_for_backward(x, rstd, weight)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # grad (..., D)
        x, rstd, weight = ctx.saved_tensors
        n = x.float() * rstd  # (..., D)
        g = grad.float() * weight.float()  # through the module's bf16 product with the weight
        dx = rstd * (g - n * (g * n).mean(-1, keepdim=True))
        return dx.to(x.dtype), None, None


def _lora_parts(module: nn.Module) -> tuple[Tensor, Tensor | None, Tensor, Tensor, float] | None:
    """(W, b, A, B, scale) of a PEFT LoRA ``Linear`` with one plain active adapter; None otherwise."""
    if not isinstance(module, LoraLinear):
        return None
    active = module.active_adapters
    if module.disable_adapters or module.merged or len(active) != 1:
        return None
    name = active[0]
    if (
        name not in module.lora_A
        or name in getattr(module, "lora_variant", {})
        or getattr(module, "use_dora", {}).get(name)
    ):
        return None
    dropout = module.lora_dropout[name]
    if module.training and not isinstance(dropout, nn.Identity) and getattr(dropout, "p", 0) > 0:
        return None
    base, a, b = module.base_layer, module.lora_A[name], module.lora_B[name]
    if not (isinstance(base, nn.Linear) and isinstance(a, nn.Linear) and isinstance(b, nn.Linear)):
        return None
    if base.weight.requires_grad or b.bias is not None:
        return None
    if base.bias is not None and base.bias.requires_grad:  # a trained bias needs its own gradient
        return None
    if not (a.weight.is_floating_point() and b.weight.dtype == a.weight.dtype):
        return None
    return base.weight, base.bias, a.weight, b.weight, float(module.scaling[name])


def lora_linear(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` for a PEFT LoRA linear (or a plain frozen ``nn.Linear``), in one autograd node."""
    parts = _lora_parts(module)
    if parts is None:
        return module(x)
    weight, bias, a, b, scale = parts
    if x.dtype != weight.dtype:  # fp32 weights under CUDA autocast: the module's own path casts per matmul
        return module(x)
    y = _LoraLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias, a, b, scale)
    return y.view(*x.shape[:-1], y.shape[-1])


def rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """A Qwen RMSNorm (``weight``, ``variance_epsilon``): torch's fused ``rms_norm`` for fp32 ``x``,
    :class:`_RmsNorm` for bf16 / fp16 ``x`` under a frozen weight of its dtype; the module otherwise."""
    eps, weight = getattr(norm, "variance_epsilon", None), getattr(norm, "weight", None)
    if eps is None:
        return norm(x)
    if x.dtype == torch.float32:
        return nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    if weight is not None and weight.dtype == x.dtype and not weight.requires_grad:
        return _RmsNorm.apply(x, weight, eps)
    return norm(x)


def mlp(module: Qwen2MLP | Qwen3MLP, y: Tensor) -> Tensor:
    """A gated MLP ``down(act(gate(y)) · up(y))`` with each projection through :func:`lora_linear`."""
    return lora_linear(
        module.down_proj, module.act_fn(lora_linear(module.gate_proj, y)) * lora_linear(module.up_proj, y)
    )

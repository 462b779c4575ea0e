"""LoRA projections and RMSNorms in fewer kernels, over the same PEFT parameters (the fast path's parts).

On small batches (16 examples × ~20 tokens) a block's time goes less to its matmuls than to the ~100
kernels around them: each LoRA projection is 5 modules and 5 kernels forward (base, dropout, A, B, scale,
add) and more backward; each RMSNorm is 6. Here a LoRA projection is one autograd function (3 matmuls
forward, 5 backward) and RMSNorm is torch's fused ``rms_norm``. Anything unusual (DoRA, several active
adapters, live LoRA dropout, merged weights, mixed dtypes, a trained base bias) falls back to the
module call. Tests hold it to the module.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import Tensor, nn
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP


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
    eps = getattr(norm, "variance_epsilon", None)
    if x.dtype != torch.float32 or eps is None:
        return norm(x)
    return nn.functional.rms_norm(x, (x.shape[-1],), getattr(norm, "weight", None), eps)


def mlp(module: Qwen2MLP | Qwen3MLP, y: Tensor) -> Tensor:
    """A gated MLP ``down(act(gate(y)) · up(y))`` with each projection through :func:`lora_linear`."""
    return lora_linear(
        module.down_proj, module.act_fn(lora_linear(module.gate_proj, y)) * lora_linear(module.up_proj, y)
    )

"""Which dtype the frozen weights take, and the trained parameters kept in fp32 whatever it is.

``model.dtype: auto`` loads the base weights in bf16 on a CUDA device that supports it (half the
memory; no per-step weight casts under autocast) and in fp32 on the CPU (exact; CPU bf16 matmuls
are slow). What trains stays fp32 under bf16 weights, as mixed-precision recipes keep master
weights: PEFT already creates LoRA weights in fp32 (``get_peft_model(autocast_adapter_dtype=True)``,
its default), but the trained copy of the ``score`` head (``modules_to_save``) is a copy of the
bf16 module, so it is cast up here; AdamW's state takes its parameters' dtype, so it is fp32 too.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

from toptune.model.load import backbone, score_head

M = TypeVar("M", bound=nn.Module)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``model.dtype`` → the base weights' dtype: ``auto`` = bf16 on CUDA where the device supports
    it, else fp32; ``float32`` / ``bfloat16`` as named."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return DTYPES[name]


def weights_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the backbone's weights (what the blocks compute in, autocast aside)."""
    return next(backbone(model).parameters()).dtype


def _input_to_weight_dtype(module: nn.Linear, args: tuple) -> tuple:
    # Blocks in bf16 hand the head bf16 states; an fp32 head takes them in fp32 (as a PEFT LoRA
    # layer casts its input to the adapter's dtype). Under CUDA autocast the matmul is bf16 anyway.
    x = args[0]
    return (x.to(module.weight.dtype), *args[1:]) if x.dtype != module.weight.dtype else args


def trainable_in_fp32(model: M) -> M:
    """Cast every trainable parameter to fp32 (in place) and let the score head's linears take
    inputs of the blocks' dtype; returns ``model``. A no-op on an fp32 model."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # same Parameter object: PEFT's wrappers keep pointing at it
    if weights_dtype(model) != torch.float32:
        for m in score_head(model).modules():
            if isinstance(m, nn.Linear):
                m.register_forward_pre_hook(_input_to_weight_dtype)
    return model

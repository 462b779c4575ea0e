"""The forward split checks itself on the user's base checkpoint: stock forward vs forward split on the
run's first batch.

Tests hold the forward split to the stock forward on tiny checkpoints of every family; a real checkpoint (or a
model type nobody tested) gets the same check before any training or cache build, on its own weights
and data. The two forwards run the same modules in the same order, so in fp32 they agree to float
rounding (measured ≤ 3e-7 on every family); a difference above the tolerance means the forward split does not
reproduce this model, and the run stops.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedModel

from toptune.prefix.forward import forward_logits, stock_logits

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
"""Largest allowed |stock − forward split| logit per weights' dtype (fp32: 300× the measured rounding)."""


class ForwardSplitMismatch(RuntimeError):
    """The forward split does not reproduce the stock forward of this base checkpoint; the message says by how much."""


@dataclass
class ForwardSplitCheck:
    """What the check measured (recorded in ``train_summary.json`` and the MLflow run)."""

    max_abs_logit_diff: float
    """Largest |stock logit − forward-split logit| over the batch and classes."""
    rows: int
    """Examples in the checked batch."""
    tolerance: float
    """The bound it was held to."""
    model_type: str
    """The base checkpoint's (text) model type."""

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def check_forward_split(
    model: PeftModel | PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    first_trainable_block: int,
    autocast=None,
) -> ForwardSplitCheck:
    """Logits of the stock forward and of the forward split on one batch, in eval mode (no dropout); raises
    :class:`ForwardSplitMismatch` with one line naming the model type and the difference above tolerance."""
    was_training = model.training
    model.eval()
    try:
        with autocast or contextlib.nullcontext():
            stock = stock_logits(model, input_ids, attention_mask).float()  # (B, C)
            forward_split = forward_logits(model, input_ids, attention_mask, first_trainable_block, "no_grad").float()
    finally:
        model.train(was_training)
    config = model.config
    dtype = next(p for p in model.parameters()).dtype
    check = ForwardSplitCheck(
        float((stock - forward_split).abs().max()),
        int(input_ids.shape[0]),
        TOLERANCE.get(dtype, 2e-2),
        config.model_type,
    )
    if not check.max_abs_logit_diff <= check.tolerance:  # also catches NaN
        raise ForwardSplitMismatch(
            f"the split forward differs from the stock forward of this {check.model_type} checkpoint by "
            f"{check.max_abs_logit_diff:.3g} (tolerance {check.tolerance:g}) on the first {check.rows} examples: "
            "toptune cannot train it exactly"
        )
    return check

"""PEFT LoRA adapters on the chosen blocks only; the ``score`` head trained in full; merging."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from toptune.config import LoraSettings


def lora_config(settings: LoraSettings, layers: list[int]) -> LoraConfig:
    """A ``LoraConfig`` on ``settings.target_modules`` of blocks ``layers``.

    ``task_type="SEQ_CLS"`` puts ``score`` in ``modules_to_save`` (trained in full, saved with the
    adapter); ``layers_to_transform`` needs ``target_modules`` as a list.
    """
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        layers_to_transform=sorted(layers),
        layers_pattern="layers",
        task_type="SEQ_CLS",
    )


def add_adapters(model: nn.Module, settings: LoraSettings, layers: list[int]) -> PeftModel:
    """Wrap ``model`` with LoRA on ``layers``; everything else is frozen."""
    peft_model = get_peft_model(model, lora_config(settings, layers))
    missing = [m for m in settings.target_modules if not any(n.endswith(m) for n, _ in model.named_modules())]
    if missing:
        raise ValueError(f"lora.target_modules: no module named {missing[0]!r} in this model")
    return peft_model


def param_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter counts (each shared tensor counted once)."""
    seen, trainable, frozen = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return {"trainable_params": trainable, "frozen_params": frozen, "total_params": trainable + frozen}


def merge(model: PeftModel) -> nn.Module:
    """Fold each LoRA update ``W + (alpha/r)·B·A`` into its base weight; a plain transformers model."""
    return model.merge_and_unload()

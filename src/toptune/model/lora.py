"""PEFT LoRA adapters on the top blocks only, for every Qwen family; the ``score`` head trained in full; merging.

Targets are resolved here to the full names of modules (and, for routed experts, parameters) inside the
trainable blocks, and PEFT is given exactly those names — never bare leaf names plus ``layers_to_transform``:

- ``lora.target_modules: auto`` = every linear projection (``*_proj``) of the top blocks' token mixers
  (attention q/k/v/o; Gated DeltaNet ``in_proj_*`` / ``out_proj``) and MLPs (a dense MLP, or a MoE
  block's shared expert); routers and the shared expert's scalar gate are left alone;
- ``lora.experts: true`` adds the routed experts of the top blocks, whose weights are stacked 3-D
  parameters in transformers 5 (``mlp.experts.gate_up_proj`` / ``down_proj``), through
  ``target_parameters``.

PEFT 0.21 rewrites LoRA configs of some MoE families (qwen3_moe, qwen3_next) from transformers-4 names:
every target ending in ``gate_proj`` / ``up_proj`` / ``down_proj`` becomes the stacked experts of *every*
block (prefix included), and the dense MLP / shared expert it named loses its adapter — on creation and
again on load. toptune's adapters are written in transformers-5 names, so :func:`v5_native` switches that
rewrite off around creating and loading them (:func:`add_adapters`, :func:`load_adapter`).
"""

from __future__ import annotations

import contextlib

from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import transformers_weight_conversion as conversion
from torch import nn
from transformers import PreTrainedModel

from toptune.config import ConfigError, LoraSettings
from toptune.model.load import backbone

_CONVERSIONS = ("convert_peft_config_for_transformers", "convert_peft_adapter_state_dict_for_transformers")
EXPERT_PARAMETERS = ("gate_up_proj", "down_proj")
"""The stacked weights of a transformers-5 ``*Experts`` module (E, 2·I, D) and (E, D, I)."""


def _block_prefix(model: nn.Module) -> str:
    """Name of the block list inside ``model`` (``model.layers``)."""
    inner = backbone(model)
    return next(name for name, m in model.named_modules() if m is inner.layers)


def target_modules(model: nn.Module, trainable_blocks: list[int], settings: LoraSettings) -> list[str]:
    """Full names of the linear modules of blocks ``trainable_blocks`` that get LoRA (see the module docstring)."""
    block_list, out = _block_prefix(model), []
    wanted = None if settings.target_modules == "auto" else set(settings.target_modules)
    for i in trainable_blocks:
        for name, module in backbone(model).layers[i].named_modules():
            leaf = name.rpartition(".")[2]
            if not isinstance(module, nn.Linear) or ".experts." in f".{name}.":
                continue
            if (wanted is None and leaf.endswith("_proj")) or (wanted is not None and leaf in wanted):
                out.append(f"{block_list}.{i}.{name}")
    if wanted is not None:
        missing = sorted(w for w in wanted if not any(n.rpartition(".")[2] == w for n in out))
        if missing:
            raise ConfigError(
                f"lora.target_modules: no linear module named {missing[0]!r} in the trainable blocks "
                f"{trainable_blocks} (use auto, or names such as q_proj, in_proj_qkv, out_proj)"
            )
    return out


def target_parameters(model: nn.Module, trainable_blocks: list[int], settings: LoraSettings) -> list[str]:
    """Full names of the routed experts' stacked weights in blocks ``trainable_blocks`` (``lora.experts``), else []."""
    if not settings.experts:
        return []
    block_list, out = _block_prefix(model), []
    for i in trainable_blocks:
        for name, module in backbone(model).layers[i].named_modules():
            if name.rpartition(".")[2] == "experts":
                out += [
                    f"{block_list}.{i}.{name}.{p}"
                    for p in EXPERT_PARAMETERS
                    if isinstance(getattr(module, p, None), nn.Parameter)
                ]
    if not out:
        raise ConfigError(f"lora.experts=true but the trainable blocks {trainable_blocks} have no routed experts")
    return out


def lora_config(model: nn.Module, settings: LoraSettings, trainable_blocks: list[int]) -> LoraConfig:
    """A ``LoraConfig`` naming every target in full. ``task_type="SEQ_CLS"`` puts ``score`` in
    ``modules_to_save`` (trained in full, saved with the adapter)."""
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules(model, trainable_blocks, settings),
        target_parameters=target_parameters(model, trainable_blocks, settings) or None,
        task_type="SEQ_CLS",
    )


@contextlib.contextmanager
def v5_native():
    """PEFT's transformers-4 → 5 rewrite of LoRA configs and adapter weights, switched off for the duration."""
    # PEFT imports both functions from this module at call time, so replacing the module's attributes
    # reaches every caller (get_peft_model, PeftModel.from_pretrained / load_adapter).
    saved = {name: getattr(conversion, name) for name in _CONVERSIONS}
    conversion.convert_peft_config_for_transformers = lambda peft_config, model, conversions: None
    conversion.convert_peft_adapter_state_dict_for_transformers = lambda model, peft_config, adapter_state_dict, **k: (
        adapter_state_dict
    )
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(conversion, name, fn)


def add_adapters(model: nn.Module, settings: LoraSettings, trainable_blocks: list[int]) -> PeftModel:
    """Wrap ``model`` with LoRA on blocks ``trainable_blocks``; everything else is frozen."""
    with v5_native():
        return get_peft_model(model, lora_config(model, settings, trainable_blocks))


def load_adapter(model: nn.Module, adapter_dir: str, is_trainable: bool = False) -> PeftModel:
    """``PeftModel.from_pretrained`` of a toptune adapter onto ``model`` (its base classifier)."""
    with v5_native():
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)


def trainable_blocks(model: nn.Module) -> set[int]:
    """Indices of the blocks holding any LoRA weight (what the adapter really touches)."""
    inner = backbone(model)
    return {i for i, block in enumerate(inner.layers) if any("lora_" in n for n, _ in block.named_parameters())}


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


def merge(model: PeftModel) -> PreTrainedModel:
    """Fold each LoRA update ``W + (alpha/r)·B·A`` into its base weight; a plain transformers model."""
    merged = model.merge_and_unload()
    assert isinstance(merged, PreTrainedModel), type(merged)
    return merged

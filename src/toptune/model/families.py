"""The open Qwen text families toptune trains, and the one piece transformers lacks for them.

=================  ==========================================  ==============================================
model type         checkpoints                                 blocks
=================  ==========================================  ==============================================
qwen2              Qwen2, Qwen2.5                              attention (full / sliding) + MLP
qwen2_moe          Qwen1.5-MoE, Qwen2-MoE                      attention + routed experts + a shared expert
qwen3              Qwen3 dense                                 attention (q/k norms) + MLP
qwen3_moe          Qwen3 MoE (30B-A3B, 235B-A22B)              attention + routed experts (dense MLP blocks
                                                               where ``mlp_only_layers`` says)
qwen3_next         Qwen3-Next                                  Gated DeltaNet (3 of 4) / gated attention +
                                                               routed + shared experts
qwen3_5            Qwen3.5, Qwen3.6, Qwen3.8 dense             Gated DeltaNet (3 of 4) / gated attention + MLP
qwen3_5_moe        Qwen3.5 / 3.6 / 3.8 MoE                     as qwen3_5, with routed + shared experts
=================  ==========================================  ==============================================

Qwen3.5 hub checkpoints are vision + language models: toptune loads the text part only (the config's
``get_text_config()``, model types ``qwen3_5_text`` / ``qwen3_5_moe_text``), and transformers' checkpoint
conversion maps ``model.language_model.*`` onto it. transformers 5.24 has a sequence-classification class
for ``qwen3_5_text`` but none for ``qwen3_5_moe_text``: :func:`register` adds one and registers its
checkpoint conversion mapping under the new class's name — transformers skips the conversions of classes
defined outside it unless they are registered, and every backbone weight would then stay random with
nothing but a "missing keys" report.
"""

from __future__ import annotations

from transformers import AutoModelForSequenceClassification
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.modeling_layers import GenericForSequenceClassification
from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import (
    Qwen3_5MoePreTrainedModel,
    Qwen3_5MoeTextConfig,
)

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen3_next", "qwen3_5", "qwen3_5_moe")
"""Tested families (top-level ``model_type`` of a hub config). Other model types are tried, not refused:
they train only if the forward split check passes."""
TEXT_MODEL_TYPES = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}
"""Composite families → the model type of their language model."""


def is_tested(model_type: str) -> bool:
    """Whether ``model_type`` (top-level or its text part's) is one of the tested families."""
    return model_type in SUPPORTED_MODEL_TYPES or model_type in TEXT_MODEL_TYPES.values()


class Qwen3_5MoeTextForSequenceClassification(GenericForSequenceClassification, Qwen3_5MoePreTrainedModel):
    """The Qwen3.5 MoE language model with a ``score`` head, as ``Qwen3_5TextForSequenceClassification`` is
    for the dense Qwen3.5."""

    config_class = Qwen3_5MoeTextConfig
    # A tuple, as transformers' own Qwen3.5 classes write it (PreTrainedModel annotates str | list[str]).
    input_modalities = ("text",)  # type: ignore[assignment]


_registered = False


def register() -> None:
    """Add :class:`Qwen3_5MoeTextForSequenceClassification` to ``AutoModelForSequenceClassification`` and
    register its checkpoint conversion (``model.language_model.*`` → ``model.*``, per-expert weights → fused).
    Idempotent; called when ``toptune.model.load`` is imported."""
    global _registered
    if _registered:
        return
    cls = Qwen3_5MoeTextForSequenceClassification
    AutoModelForSequenceClassification.register(Qwen3_5MoeTextConfig, cls, exist_ok=True)
    register_checkpoint_conversion_mapping(
        cls.__name__, get_checkpoint_conversion_mapping("qwen3_5_moe_text"), overwrite=True
    )
    _registered = True

"""Load any open Qwen base checkpoint as a sequence classifier, the way its hub repo ships it.

``AutoModelForSequenceClassification.from_pretrained`` on a hub id or a local directory, with a new
(seeded) ``score`` head. Qwen3.5 checkpoints are vision + language models: only the language model is
built (the config's ``get_text_config()``), and transformers' checkpoint conversion maps its weights out of
``model.language_model.*`` (:mod:`toptune.model.families`). Model types outside the tested families are tried,
not refused: the run's forward split check decides whether they train.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import PeftModel
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from toptune.model import families

log = logging.getLogger(__name__)

families.register()

if TYPE_CHECKING:

    class Decoder(PreTrainedModel):
        """What toptune reads of a decoder stack (``Qwen2Model``, ``Qwen3Model``, …, every family's):
        torch types a submodule read by name as ``Tensor | Module``, so the names are declared here."""

        embed_tokens: nn.Embedding
        layers: nn.ModuleList
        norm: nn.Module
        rotary_emb: nn.Module

else:
    Decoder = PreTrainedModel

LINEAR_ATTENTION_KERNELS = ("fla", "causal_conv1d")
"""Modules of the CUDA kernels Gated DeltaNet blocks use (PyPI: flash-linear-attention, causal-conv1d)."""


def text_config(name_or_path: str | Path):
    """The language model's config of a base checkpoint (the whole config, or ``text_config`` of a composite one)."""
    return AutoConfig.from_pretrained(str(name_or_path)).get_text_config()


def load_classifier(
    name_or_path: str | Path,
    id2label: dict[int, str],
    pad_token_id: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    problem_type: str = "single_label_classification",
) -> PreTrainedModel:
    """The base checkpoint's language model with a new ``score`` head of ``len(id2label)`` outputs (initialised
    under ``seed``), label maps and ``problem_type`` (transformers' name) set.

    ``pad_token_id`` goes on the config since the model pools at the rightmost token that is not padding
    (many Qwen3 configs lack one; Qwen3.5's lives on its text config). The KV / recurrent cache is off:
    a classifier never decodes.
    """
    config = text_config(name_or_path)
    if not families.is_tested(config.model_type):
        log.warning(
            "model type %r is not one of toptune's tested families (%s): it trains only if the forward split "
            "check passes",
            config.model_type,
            ", ".join(families.SUPPORTED_MODEL_TYPES),
        )
    config.num_labels = len(id2label)
    config.id2label = {int(k): v for k, v in id2label.items()}
    config.label2id = {v: int(k) for k, v in id2label.items()}
    config.problem_type = problem_type
    config.pad_token_id = pad_token_id
    config.use_cache = False
    torch.manual_seed(seed)
    # safetensors only (no pickle is unpickled), and no code from the checkpoint's repository runs.
    model = AutoModelForSequenceClassification.from_pretrained(
        str(name_or_path), config=config, dtype=dtype, use_safetensors=True, trust_remote_code=False
    )
    warn_missing_kernels(model)
    return model


_warned: set[str] = set()


def warn_missing_kernels(model: nn.Module) -> None:
    """Say once per process, on CUDA, when Gated DeltaNet blocks will run transformers' slow fp32 fallback
    (reported: 1.22 s/step without the kernels, 0.70 with them)."""
    types = set(getattr(backbone(model).config, "layer_types", None) or ())
    if "linear_attention" not in types or not torch.cuda.is_available() or "kernels" in _warned:
        return
    missing = [m for m in LINEAR_ATTENTION_KERNELS if importlib.util.find_spec(m) is None]
    if missing:
        _warned.add("kernels")
        log.warning(
            "Gated DeltaNet blocks run transformers' slow torch fallback: install flash-linear-attention "
            "and causal-conv1d for the CUDA kernels (missing modules: %s)",
            ", ".join(missing),
        )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a (possibly PEFT-wrapped) Qwen classifier, block 0 first."""
    return backbone(model).layers


def _classifier(model: nn.Module) -> PreTrainedModel:
    """The transformers classifier itself, inside a PEFT model or not."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    assert isinstance(base, PreTrainedModel), type(base)
    return base


def backbone(model: nn.Module) -> Decoder:
    """The decoder (embeddings, blocks, norm, rotary: a ``Qwen2Model``, ``Qwen3Model``, …) inside a classifier
    or PEFT model."""
    return _classifier(model).model


def score_head(model: nn.Module) -> nn.Module:
    """The classification head (a PEFT ``ModulesToSaveWrapper`` around ``score`` when wrapped)."""
    head = _classifier(model).score
    assert isinstance(head, nn.Module)
    return head

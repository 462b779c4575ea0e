"""From a trained adapter bundle to a merged one: fold LoRA into the base weights and save a plain
transformers model directory that predicts with no PEFT in the loop (see :mod:`toptune.serve.predict`).

The merged model (``data/06_models/merged/``) is a bundle (:mod:`toptune.serve.bundle`): safetensors
weights whose LoRA updates ``W + (alpha/r)·B·A`` are folded in, a config with ``id2label`` /
``label2id`` / ``num_labels`` / ``problem_type`` / ``pad_token_id``, the tokenizer files, ``toptune.json``
and ``examples.json``.
:func:`export_bundle` reads only the adapter bundle: its labels, template, token limit, example rows
and base checkpoint (whose weights and tokenizer must hash as they did in training).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from toptune.data.tokens import Encoded, encode
from toptune.io.atomic import staging_dir, swap_dir
from toptune.model.load import load_classifier
from toptune.model.lora import load_adapter, merge
from toptune.model.tokenizer import load_tokenizer
from toptune.serve.bundle import (
    Bundle,
    check_base,
    read_bundle,
    read_examples,
    write_bundle,
)
from toptune.serve.predict import (
    ServingConfig,
    logits_of,
    prepare_rows,
)
from toptune.task import SINGLE
from toptune.train.recipe import resolve_base_checkpoint


def load_trained(base_path: str | Path, adapter_dir: str | Path, id2label: dict[int, str], problem_type: str = SINGLE):
    """The trained model: ``base_path`` as a ``problem_type`` head of ``len(id2label)`` outputs with the adapter
    (LoRA + ``score``) on top.

    Returns ``(PeftModel, tokenizer)`` in eval mode, fp32 on CPU.
    """
    tok = load_tokenizer(base_path)
    model = load_classifier(base_path, id2label, tok.pad_token_id, problem_type=problem_type)
    return load_adapter(model, str(adapter_dir)).eval(), tok


@dataclass
class MergedModel:
    """A merged classifier ready to save as a plain transformers model directory."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    serving: ServingConfig
    check: dict[str, float] = field(default_factory=dict)
    """``merge_check_rows`` and ``merge_max_abs_diff`` (merged vs adapter logits) when checked."""
    bundle: Bundle | None = None
    """The merged bundle's manifest (from the adapter's); required to save."""
    examples: pd.DataFrame | None = None
    """The adapter bundle's example rows, carried over."""

    def save(self, out_dir: str | Path) -> Path:
        """Write weights (safetensors), config, tokenizer files, ``toptune.json`` and ``examples.json``.

        Written to a staging directory and swapped in, so a failed save never leaves a half-written
        merged model or files of an older one.
        """
        if self.bundle is None:
            raise ValueError("a merged checkpoint is saved with its bundle manifest (see export_bundle)")
        staged = staging_dir(out_dir)
        shutil.rmtree(staged.parent, ignore_errors=True)
        self.model.save_pretrained(staged)
        self.tokenizer.save_pretrained(staged)
        self.bundle = write_bundle(staged, self.bundle, self.examples)
        return swap_dir(staged, out_dir)


def merge_adapter(
    base_path: str | Path,
    adapter_dir: str | Path,
    id2label: dict[int, str],
    serving: ServingConfig,
    check: Encoded | None = None,
    atol: float = 1e-4,
    batch_size: int = 32,
    problem_type: str = SINGLE,
) -> MergedModel:
    """Fold the adapter into the base weights (PEFT ``merge_and_unload``).

    With ``check`` (tokenised rows), the merged model's logits on them are compared with the adapter model's
    first, and a difference above ``atol`` raises (a merge that changes predictions must not ship).
    """
    peft_model, tok = load_trained(base_path, adapter_dir, id2label, problem_type)
    before = logits_of(peft_model, check, tok.pad_token_id, batch_size) if check else None
    merged = merge(peft_model).eval()  # (PEFT wrappers gone: Qwen*ForSequenceClassification)
    merged.config.pad_token_id = tok.pad_token_id
    # What a server reading config.json needs (vLLM's /classify: num_labels, problem_type, the
    # …ForSequenceClassification architecture save_pretrained writes); a composite config's text part too.
    for config in (merged.config, getattr(merged.config, "text_config", None)):
        if config is not None:
            config.num_labels = len(id2label)  # sets id2label to placeholders: the names follow
            config.id2label = {int(k): v for k, v in id2label.items()}
            config.label2id = {v: int(k) for k, v in id2label.items()}
            config.problem_type = problem_type
    figures = {}
    if check and before is not None:
        diff = float(np.abs(logits_of(merged, check, tok.pad_token_id, batch_size) - before).max())
        figures = {"merge_check_rows": float(len(check)), "merge_max_abs_diff": diff}
        if diff > atol:
            raise RuntimeError(f"merged logits differ from the adapter's by {diff:.3g} > export.merge_atol={atol}")
    return MergedModel(merged, tok, serving, figures)


def export_bundle(adapter_dir: str | Path, check_rows: int = 64, atol: float = 1e-4) -> MergedModel:
    """Merge the adapter bundle at ``adapter_dir`` into its base checkpoint, reading nothing else.

    The base checkpoint must hash as it did in training; the merged logits are compared with the
    adapter's on up to ``check_rows`` of the bundle's example rows (a merge that changes predictions
    must not ship).
    """
    adapter = read_bundle(adapter_dir, "adapter")
    base = resolve_base_checkpoint(adapter.base_model)
    check_base(adapter, base)
    serving = ServingConfig.of(adapter)
    examples = read_examples(adapter_dir)
    texts = prepare_rows(examples, serving, "drop").texts[:check_rows] if check_rows and len(examples) else []
    check = encode(texts, load_tokenizer(base), adapter.max_length) if texts else None
    merged = merge_adapter(
        base, adapter_dir, adapter.id2label, serving, check=check, atol=atol, problem_type=adapter.problem_type
    )
    merged.bundle = dataclasses.replace(
        adapter,
        kind="merged",
        extra={
            **adapter.extra,
            "merged_from_adapter_sha256": adapter.weights_sha256,
            "base_tokenizer_sha256": adapter.tokenizer_sha256,
        },
    )
    merged.examples = examples
    return merged

"""Classify tables with a merged model: the one path the ``predict`` pipeline, the MLflow pyfunc
model and the REST server share (:func:`prepare_rows` then :meth:`Predictor.predict`).

The merged model is a bundle (:mod:`toptune.serve.bundle`): :func:`load_predictor` reads its
``toptune.json`` (template, token limit, labels, the task), refuses one whose parts disagree, and loads the
weights with transformers alone, safetensors only, no remote code. Prediction runs the stock forward:
right padding, pooled at the rightmost token that is not ``pad_token_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from toptune.config import BAD_ROW_POLICIES, ConfigError, DataConfig
from toptune.data.batches import rows_batch
from toptune.data.read import whole
from toptune.data.table import DataValidationError, render, row_reasons, template_columns
from toptune.data.tokens import Encoded, encode
from toptune.model import families
from toptune.model.tokenizer import load_tokenizer
from toptune.serve.bundle import Bundle, bundle_task, read_bundle
from toptune.task import Task

if TYPE_CHECKING:  # a type only: a merged model is served without PEFT installed
    from peft import PeftModel

TEXT_COLUMN = "text"
"""A column of already-serialised texts, accepted when the table lacks the template's columns."""


@dataclass
class ServingConfig:
    """How a table's rows become the model's input (the bundle's template, token limit and columns). Not a
    parameter group: it is read from the bundle's ``toptune.json``, which the bundle's own checks vouch for."""

    text_template: str
    """The ``str.format`` template the model was trained with (``data.text_template``)."""
    max_length: int
    """Token limit per text (``training.max_length``); longer texts are truncated."""
    id_column: str | None = "id"
    """Column whose value identifies a row in the output; absent = the row's position in the input."""
    label_column: str | None = None
    """The training table's label column; ignored when present in a table to classify."""
    missing_fields: str = "fill"
    """How a blank template cell renders (``data.missing_fields`` of training)."""

    @classmethod
    def of(cls, bundle: Bundle) -> ServingConfig:
        return cls(
            bundle.text_template, bundle.max_length, bundle.id_column, bundle.label_column, bundle.missing_fields
        )

    @classmethod
    def load(cls, model_dir: str | Path) -> ServingConfig:
        return cls.of(read_bundle(model_dir, "merged"))


def request_params(params: dict[str, Any] | None, defaults: dict[str, Any]) -> tuple[str, int]:
    """``(bad_rows, batch_size)`` of a pyfunc / REST request, over the model's defaults; a bad value
    fails naming it (``params.batch_size=-1 must be an integer >= 1``)."""
    p = {
        "bad_rows": "error",
        "batch_size": 64,
        **defaults,
        **{k: v for k, v in (params or {}).items() if v is not None},
    }
    unknown = sorted(set(p) - {"bad_rows", "batch_size"})
    if unknown:
        raise ConfigError(f"params.{unknown[0]} is not a parameter of this model (bad_rows, batch_size)")
    bad_rows, batch_size = p["bad_rows"], p["batch_size"]
    if bad_rows not in BAD_ROW_POLICIES:
        raise ConfigError(f"params.bad_rows={bad_rows!r} must be 'drop' or 'error'")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"params.batch_size={batch_size!r} must be an integer >= 1")
    return str(bad_rows), int(batch_size)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.inference_mode()
def logits_of(
    model: PreTrainedModel | PeftModel,
    rows: Encoded,
    pad_token_id: int,
    batch_size: int,
    progress: bool = False,
) -> np.ndarray:
    """(N, C) float32 logits of the stock forward, in input order.

    Rows are batched by length (less padding), right-padded, and put back in order at the end.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort(rows.lengths(), kind="stable")
    num_labels = model.config.num_labels
    assert num_labels is not None  # a classifier's config always names its classes
    out = np.zeros((len(rows), num_labels), dtype=np.float32)
    bar = tqdm(total=len(rows), desc="predict", unit="row", disable=not progress, mininterval=1.0)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        b = rows_batch(rows, idx, pad_token_id)
        logits = model(
            input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)
        ).logits  # (B, C)
        out[idx] = logits.float().cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return out


@dataclass
class PredictRows:
    """The rows of a table that can be classified, serialised, and what was skipped."""

    ids: list[str]
    texts: list[str]
    counts: dict[str, int]
    """``rows_in``, ``rows_predicted``, ``dropped_empty_text``, ``dropped_non_string``."""
    source: str
    """What the texts were built from: ``template columns`` or ``'text' column``."""

    def skipped(self, policy: str) -> str | None:
        """``skipped N of M rows (<reason>=<count>, …; <policy>)``, or None when no row was dropped."""
        dropped = {k.removeprefix("dropped_"): v for k, v in self.counts.items() if k.startswith("dropped_") and v}
        if not dropped:
            return None
        reasons = ", ".join(f"{k}={v}" for k, v in dropped.items())
        return f"skipped {sum(dropped.values())} of {self.counts['rows_in']} rows ({reasons}; {policy})"


def prepare_rows(table, serving: ServingConfig, bad_rows: str = "drop") -> PredictRows:
    """Validate and serialise the rows of ``table`` (pandas or Hugging Face dataset) for prediction.

    Texts come from the model's template when the table has all its columns, else from a ``text``
    column; otherwise the error names the missing column. Extra columns (the label column, say) are
    ignored. Bad cells (empty / NaN text, a non-string in a text column: the training rule) fail the
    call under ``bad_rows="error"``, naming the row and column, or are skipped and counted under ``drop``.
    """
    if bad_rows not in BAD_ROW_POLICIES:
        raise ConfigError(f"bad_rows={bad_rows!r} must be 'drop' or 'error'")
    df = whole(table)
    df.columns = [str(c) for c in df.columns]
    template, source = serving.text_template, "template columns"
    missing = [c for c in template_columns(template) if c not in df.columns]
    if missing:
        if TEXT_COLUMN not in df.columns:
            raise DataValidationError(
                f"the table lacks column '{missing[0]}' of the model's text template {template!r} and has no "
                f"'{TEXT_COLUMN}' column (columns: {', '.join(df.columns) or 'none'})"
            )
        template, source = "{" + TEXT_COLUMN + "}", f"'{TEXT_COLUMN}' column"
    if serving.id_column and serving.id_column in df.columns:
        ids = df[serving.id_column].astype(str)
    else:
        ids = pd.Series(df.index.astype(str), index=df.index)
    rule = DataConfig(text_template=template, missing_fields=serving.missing_fields)  # type: ignore[arg-type]
    reasons, _ = row_reasons(df, rule, need_label=False)
    bad = reasons != ""
    if bad_rows == "error" and bad.any():
        row = int(np.flatnonzero(bad)[0])
        kind, col = reasons[row].split(":", 1)
        raise DataValidationError(
            f"row {row} (id {ids.iloc[row]}), column '{col}': {kind.replace('_', ' ')} (bad_rows=error)"
        )
    ok = df[~bad]
    counts = {"rows_in": len(df), "rows_predicted": len(ok)}
    for kind in ("empty_text", "non_string"):
        counts[f"dropped_{kind}"] = sum(1 for r in reasons[bad] if r.startswith(kind))
    return PredictRows(ids[~bad].tolist(), render(ok, template), counts, source)


@dataclass
class Predictor:
    """A merged model loaded for prediction (no PEFT), with the task its outputs answer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    serving: ServingConfig
    task: Task = field(default_factory=Task)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(self.task.id2label)

    def columns(self) -> list[str]:
        """Output columns: ``id``, then :meth:`Task.columns`."""
        return ["id", *self.task.columns()]

    def predict(self, rows: PredictRows, batch_size: int = 64, progress: bool = False) -> pd.DataFrame:
        """One output row per input row of ``rows``: its id and the task's answer (:meth:`Task.answers`:
        calibrated probabilities, the thresholded labels, a value on the target's scale)."""
        if not rows.texts:
            return self.task.answers([], np.zeros((0, self.task.num_labels), np.float32))
        enc = encode(rows.texts, self.tokenizer, self.serving.max_length, ids=rows.ids)
        logits = logits_of(self.model, enc, self.model.config.pad_token_id, batch_size, progress)  # (N, C)
        return self.task.answers(rows.ids, logits)


def load_predictor(model_dir: str | Path, device: str = "auto") -> Predictor:
    """Load a merged bundle (checked: labels, tokenizer, template) with transformers alone."""
    bundle = read_bundle(model_dir, "merged")
    families.register()  # a merged Qwen3.5 MoE classifier is toptune's own class
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), dtype=torch.float32, use_safetensors=True, trust_remote_code=False
    )
    tok = load_tokenizer(model_dir)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return Predictor(model.to(_device(device)).eval(), tok, ServingConfig.of(bundle), bundle_task(bundle))

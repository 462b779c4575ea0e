"""From a trained adapter to predictions: merge LoRA into the base weights, save a plain transformers
checkpoint, and classify tables with it.

The merged checkpoint (``data/06_models/merged/``) is what serves: safetensors weights whose LoRA
updates ``W + (alpha/r)·B·A`` are folded in, a config with ``id2label`` / ``label2id`` /
``pad_token_id``, the tokenizer files and ``toptune.json`` (the text template and token limit the
model was trained with). It loads with ``AutoModelForSequenceClassification.from_pretrained`` alone:
nothing here imports PEFT except :func:`load_trained` / :func:`merge_adapter`, which need it.

Prediction runs the stock forward (no split prefix): right padding, the model pools at the rightmost
token that is not ``pad_token_id``. The Kedro ``predict`` pipeline and the MLflow pyfunc model both
call :func:`prepare_rows` then :meth:`Predictor.predict`, so they give the same answers.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from toptune.config import ConfigError, DataConfig
from toptune.data import DataValidationError, bad_cell_reasons, collate, encode, render_texts, template_columns, to_frame
from toptune.tokenizer import load_tokenizer

SERVING_FILE = "toptune.json"
"""The serving settings saved beside the merged weights."""
TEXT_COLUMN = "text"
"""A column of already-serialised texts, accepted when the table lacks the template's columns."""
BAD_ROW_POLICIES = ("drop", "error")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class ServingConfig:
    """How a table's rows become the model's input; saved as ``toptune.json`` in the merged checkpoint."""

    text_template: str
    """The ``str.format`` template the model was trained with (``data.text_template``)."""
    max_length: int
    """Token limit per text (``training.max_length``); longer texts are truncated."""
    id_column: str | None = "id"
    """Column whose value identifies a row in the output; absent = the row's position in the input."""
    label_column: str | None = None
    """The training table's label column; ignored when present in a table to classify."""

    def save(self, out_dir: str | Path) -> None:
        (Path(out_dir) / SERVING_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, model_dir: str | Path) -> ServingConfig:
        path = Path(model_dir) / SERVING_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {model_dir} is not a toptune merged checkpoint")
        return cls(**json.loads(path.read_text()))


@dataclass
class ExportConfig:
    """The ``export`` pipeline (parameters ``export.*``)."""

    check_rows: int = 64
    """Test-split rows on which the merged model's logits are compared with the adapter's; 0 skips."""
    merge_atol: float = 1e-4
    """Largest allowed |merged logit - adapter logit| (fp32); the export fails beyond it."""
    registered_model_name: str | None = "toptune-classifier"
    """Register the pyfunc model under this name when the store has a registry; null = don't."""
    example_rows: int = 5
    """Rows of ``raw_data`` saved as the pyfunc model's input example (and used to infer the signature)."""
    bad_rows: str = "error"
    """Default policy of the pyfunc / REST model for bad rows (``error`` | ``drop``); a request can
    override it with ``params: {bad_rows: drop}``."""
    batch_size: int = 64
    """Default rows per forward pass of the pyfunc / REST model."""

    def __post_init__(self) -> None:
        _check(self.check_rows >= 0, f"export.check_rows={self.check_rows} must be >= 0")
        _check(self.merge_atol > 0, f"export.merge_atol={self.merge_atol} must be > 0")
        _check(self.example_rows >= 1, f"export.example_rows={self.example_rows} must be >= 1")
        _check(self.bad_rows in BAD_ROW_POLICIES, f"export.bad_rows={self.bad_rows!r} must be 'drop' or 'error'")
        _check(self.batch_size >= 1, f"export.batch_size={self.batch_size} must be >= 1")


@dataclass
class PredictConfig:
    """The ``predict`` pipeline (parameters ``predict.*``)."""

    batch_size: int = 64
    """Rows per forward pass."""
    bad_rows: str = "drop"
    """Rows with an empty / NaN text cell or a non-string cell in a text column: ``drop`` (skipped,
    counted, logged) or ``error`` (fail naming the first bad row and column)."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"predict.batch_size={self.batch_size} must be >= 1")
        _check(self.bad_rows in BAD_ROW_POLICIES, f"predict.bad_rows={self.bad_rows!r} must be 'drop' or 'error'")
        _check(self.device in ("auto", "cpu", "cuda"), f"predict.device={self.device!r} must be auto, cpu or cuda")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.inference_mode()
def logits_of(model: nn.Module, input_ids: list[list[int]], pad_token_id: int, batch_size: int,
              progress: bool = False) -> np.ndarray:
    """(N, C) float32 logits of the stock forward, in input order.

    Rows are batched by length (less padding), right-padded, and put back in order at the end.
    """
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(x) for x in input_ids], kind="stable")
    out = np.zeros((len(input_ids), model.config.num_labels), dtype=np.float32)
    bar = tqdm(total=len(input_ids), desc="predict", unit="row", disable=not progress, mininterval=1.0)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        b = collate([input_ids[i] for i in idx], [-1] * len(idx), pad_token_id)
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits  # (B, C)
        out[idx] = logits.float().cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return out


# --- merge -------------------------------------------------------------------------------------


def load_trained(base_path: str | Path, adapter_dir: str | Path, id2label: dict[int, str]):
    """The trained classifier: ``base_path`` as a classifier with the adapter (LoRA + ``score``) on top.

    Returns ``(PeftModel, tokenizer)`` in eval mode, fp32 on CPU.
    """
    from toptune.adapters import load_adapter
    from toptune.model import load_classifier

    tok = load_tokenizer(base_path)
    model = load_classifier(base_path, id2label, tok.pad_token_id)
    return load_adapter(model, str(adapter_dir)).eval(), tok


@dataclass
class MergedCheckpoint:
    """A merged classifier ready to save as a plain transformers checkpoint."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    serving: ServingConfig
    check: dict[str, float] = field(default_factory=dict)
    """``merge_check_rows`` and ``merge_max_abs_diff`` (merged vs adapter logits) when checked."""

    def save(self, out_dir: str | Path) -> Path:
        """Write weights (safetensors), config, tokenizer files and ``toptune.json`` to ``out_dir``.

        Written to a sibling directory first and swapped in, so a failed save never leaves a
        half-written checkpoint or files of an older one.
        """
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        self.serving.save(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
        return out_dir


def merge_adapter(base_path: str | Path, adapter_dir: str | Path, id2label: dict[int, str], serving: ServingConfig,
                  check_input_ids: list[list[int]] | None = None, atol: float = 1e-4,
                  batch_size: int = 32) -> MergedCheckpoint:
    """Fold the adapter into the base weights (PEFT ``merge_and_unload``).

    With ``check_input_ids``, the merged model's logits on them are compared with the adapter model's
    first, and a difference above ``atol`` raises (a merge that changes predictions must not ship).
    """
    from toptune.adapters import merge

    peft_model, tok = load_trained(base_path, adapter_dir, id2label)
    before = logits_of(peft_model, check_input_ids, tok.pad_token_id, batch_size) if check_input_ids else None
    merged = merge(peft_model).eval()  # (PEFT wrappers gone: Qwen*ForSequenceClassification)
    merged.config.pad_token_id = tok.pad_token_id
    merged.config.id2label = {int(k): v for k, v in id2label.items()}
    merged.config.label2id = {v: int(k) for k, v in id2label.items()}
    check = {}
    if before is not None:
        diff = float(np.abs(logits_of(merged, check_input_ids, tok.pad_token_id, batch_size) - before).max())
        check = {"merge_check_rows": float(len(check_input_ids)), "merge_max_abs_diff": diff}
        if diff > atol:
            raise RuntimeError(f"merged logits differ from the adapter's by {diff:.3g} > export.merge_atol={atol}")
    return MergedCheckpoint(merged, tok, serving, check)


# --- predict -----------------------------------------------------------------------------------


@dataclass
class PredictRows:
    """The rows of a table that can be classified, serialised, and what was skipped."""

    ids: list[str]
    texts: list[str]
    counts: dict[str, int]
    """``rows_in``, ``rows_predicted``, ``dropped_empty_text``, ``dropped_non_string``."""
    source: str
    """What the texts were built from: ``template columns`` or ``'text' column``."""


def prepare_rows(table, serving: ServingConfig, bad_rows: str = "drop") -> PredictRows:
    """Validate and serialise the rows of ``table`` (pandas or Hugging Face dataset) for prediction.

    Texts come from the model's template when the table has all its columns, else from a ``text``
    column; otherwise the error names the missing column. Extra columns (the label column, say) are
    ignored. Bad cells (empty / NaN text, a non-string in a text column) fail the call under
    ``bad_rows="error"``, naming the row and column, or are skipped and counted under ``drop``.
    """
    if bad_rows not in BAD_ROW_POLICIES:
        raise ConfigError(f"bad_rows={bad_rows!r} must be 'drop' or 'error'")
    df = to_frame(table).reset_index(drop=True)
    df.columns = [str(c) for c in df.columns]
    template, source = serving.text_template, "template columns"
    missing = [c for c in template_columns(template) if c not in df.columns]
    if missing:
        if TEXT_COLUMN not in df.columns:
            raise DataValidationError(
                f"the table lacks column '{missing[0]}' of the model's text template {template!r} and has no "
                f"'{TEXT_COLUMN}' column (columns: {', '.join(df.columns) or 'none'})")
        template, source = "{" + TEXT_COLUMN + "}", f"'{TEXT_COLUMN}' column"
    if serving.id_column and serving.id_column in df.columns:
        ids = df[serving.id_column].astype(str)
    else:
        ids = pd.Series(df.index.astype(str), index=df.index)
    reasons = bad_cell_reasons(df, DataConfig(text_template=template), need_label=False) if len(df) else pd.Series(dtype=object)
    bad = reasons != ""
    if bad_rows == "error" and bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        kind, col = reasons.iloc[row].split(":", 1)
        raise DataValidationError(f"row {row} (id {ids.iloc[row]}), column '{col}': {kind.replace('_', ' ')} (bad_rows=error)")
    ok = df[~bad]
    counts = {"rows_in": len(df), "rows_predicted": len(ok)}
    for kind in ("empty_text", "non_string"):
        counts[f"dropped_{kind}"] = int(reasons.str.startswith(kind).sum()) if len(df) else 0
    return PredictRows(ids[~bad].tolist(), render_texts(ok, template), counts, source)


@dataclass
class Predictor:
    """A merged checkpoint loaded for prediction (no PEFT)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    serving: ServingConfig

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.model.config.id2label.items()}

    def columns(self) -> list[str]:
        """Output columns: ``id``, ``label``, then ``prob_<class>`` in class-index order."""
        return ["id", "label"] + [f"prob_{self.id2label[c]}" for c in sorted(self.id2label)]

    def predict(self, rows: PredictRows, batch_size: int = 64, progress: bool = False) -> pd.DataFrame:
        """One output row per input row of ``rows``: id, predicted label, probability per class."""
        if not rows.texts:
            return pd.DataFrame({c: pd.Series(dtype=str if c in ("id", "label") else np.float32) for c in self.columns()})
        enc = encode(rows.texts, self.tokenizer, self.serving.max_length, ids=rows.ids)
        logits = logits_of(self.model, enc.input_ids, self.model.config.pad_token_id, batch_size, progress)  # (N, C)
        probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
        id2label = self.id2label
        out = pd.DataFrame({"id": rows.ids, "label": [id2label[int(i)] for i in probs.argmax(-1)]})
        for c in sorted(id2label):
            out[f"prob_{id2label[c]}"] = probs[:, c]
        return out


def load_predictor(model_dir: str | Path, device: str = "auto") -> Predictor:
    """Load a merged checkpoint (weights, tokenizer, ``toptune.json``) with transformers alone."""
    serving = ServingConfig.load(model_dir)
    from toptune import families

    families.register()  # a merged Qwen3.5 MoE classifier is toptune's own class
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32)
    tok = load_tokenizer(model_dir)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return Predictor(model.to(_device(device)).eval(), tok, serving)

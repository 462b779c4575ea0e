"""Typed run configuration: one dataclass per parameter group of ``conf/base/parameters.yml``.

Every field has a docstring and a default; ``from_dict`` turns a Kedro ``params:`` dict into the
dataclass, naming any unknown key and any value whose type is not the field's annotation (derived
from the dataclass, so a new field needs no new check); ``__post_init__`` rejects values out of range.
Each failure is one line naming the parameter (``training.lr``, ``model.trainable_layers``, …).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from toptune.typecheck import describe_type, describe_value, match_type

T = TypeVar("T")

DEFAULT_MODEL_PATH = "data/06_models/tiny-qwen3"
"""Where the embedded default (seeded tiny Qwen3 + offline Qwen tokenizer) is written on first use."""


PREFIX_MODES = ("auto", "no_grad", "autograd", "cache")
"""How the frozen prefix runs (``training.prefix_mode``)."""


METRICS_FOR_BEST = ("macro_f1", "accuracy", "loss")
"""Validation metrics that can pick the kept epoch (``training.metric_for_best``)."""


class ConfigError(ValueError):
    """A parameter has a bad value; the message names it."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def from_dict(cls: type[T], values: dict[str, Any] | None, group: str) -> T:
    """Build dataclass ``cls`` from a parameter dict: the first unknown key or a value of the wrong type
    fails with one line naming ``group.key``; ranges are the dataclass's own ``__post_init__`` checks."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {group}.{close[0]}?)" if close else ""
        raise ConfigError(f"unknown parameter {group}.{unknown[0]}{hint}; known: {', '.join(sorted(known))}")
    for name, value in values.items():
        ok, values[name] = match_type(value, hints[name])
        _check(ok, f"{group}.{name}={value!r} must be {describe_type(hints[name])}, not {describe_value(value)}")
    return cls(**values)


@dataclass
class DataConfig:
    """How the raw table becomes labelled text (parameters ``data.*``)."""

    text_template: str = "Product: {product}\nChannel: {channel}\nReview: {review}"
    """``str.format`` template over the table's columns; each row becomes one text."""
    label_column: str = "sentiment"
    """Column holding the class label (any values; the sorted distinct values become classes)."""
    id_column: str | None = "id"
    """Column identifying a row in predictions; None (or absent) = the row number."""
    val_fraction: float = 0.1
    """Share of rows held out for validation each epoch (stratified)."""
    test_fraction: float = 0.1
    """Share of rows held out for the final test metrics (stratified)."""
    min_class_rows: int = 10
    """Classes with fewer rows cannot be split into train/val/test: they are dropped and counted."""
    drop_duplicates: bool = True
    """Drop rows whose text and label repeat an earlier row (counted); False keeps them."""
    bad_rows: str = "drop"
    """Rows with an empty / NaN text cell, a NaN label or a non-string text cell: ``drop`` (counted,
    logged) or ``error`` (fail naming the first bad row and column)."""
    sample_rows: int | None = None
    """Use about N valid rows (quick runs, tests): the first N / classes of each class (at least
    ``min_class_rows``); the rest is counted as ``dropped_sample_rows``. None = all."""
    min_text_tokens: int = 4
    """A text cut by ``training.max_length`` to fewer tokens than this is near-empty; when more than
    ``short_text_share`` of a split is, the run warns (log + MLflow tag ``warning.short_texts``)."""
    short_text_share: float = 0.1
    """Share of a split's rows cut to near-empty (see ``min_text_tokens``) above which the run warns."""

    def __post_init__(self) -> None:
        _check("{" in self.text_template, "data.text_template must name at least one {column}")
        _check(bool(self.label_column), "data.label_column must name a column")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            _check(0 < v < 0.5, f"data.{name}={v} must be in (0, 0.5)")
        _check(self.val_fraction + self.test_fraction < 0.9, "data.val_fraction + data.test_fraction must be < 0.9")
        _check(self.min_class_rows >= 3, f"data.min_class_rows={self.min_class_rows} must be >= 3 (one row per split)")
        _check(self.bad_rows in ("drop", "error"), f"data.bad_rows={self.bad_rows!r} must be 'drop' or 'error'")
        _check(self.sample_rows is None or self.sample_rows > 0, "data.sample_rows must be > 0 or null")
        _check(self.min_text_tokens >= 1, f"data.min_text_tokens={self.min_text_tokens} must be >= 1")
        _check(0 <= self.short_text_share < 1, f"data.short_text_share={self.short_text_share} must be in [0, 1)")


@dataclass
class ModelConfig:
    """Which checkpoint, and which of its blocks train (parameters ``model.*``)."""

    name_or_path: str = DEFAULT_MODEL_PATH
    """A hub id (``Qwen/Qwen3-0.6B``) or a local directory of a Qwen2 / Qwen2.5 / Qwen3 checkpoint.
    The default path holds the embedded seeded tiny Qwen3, written there on first use."""
    trainable_layers: int | list[int] = 3
    """K (train the top K blocks) or an explicit list of block indices. Blocks below the lowest
    trainable one form the frozen prefix."""
    dtype: str = "auto"
    """Frozen base weights' dtype: ``auto`` (bf16 on a CUDA device that supports it, fp32 on the
    CPU), ``float32`` or ``bfloat16``. LoRA weights, the score head and the optimiser state stay
    fp32 whatever it is (``toptune.model.precision``); on CUDA the forward runs under bf16 autocast."""

    def __post_init__(self) -> None:
        _check(bool(self.name_or_path), "model.name_or_path must be set")
        k = self.trainable_layers
        if isinstance(k, int):
            _check(k >= 1, f"model.trainable_layers={k} must be >= 1")
        else:
            _check(isinstance(k, (list, tuple)) and len(k) > 0 and all(isinstance(i, int) and i >= 0 for i in k),
                   f"model.trainable_layers={k!r} must be an int K or a non-empty list of block indices")
            self.trainable_layers = sorted(set(k))
        _check(self.dtype in ("auto", "float32", "bfloat16"), f"model.dtype={self.dtype!r} must be auto, float32 or bfloat16")

    def trainable_blocks(self, num_layers: int) -> list[int]:
        """The trainable block indices for a model of ``num_layers`` blocks."""
        k = self.trainable_layers
        if isinstance(k, int):
            _check(k <= num_layers, f"model.trainable_layers={k} exceeds the model's {num_layers} blocks")
            return list(range(num_layers - k, num_layers))
        _check(max(k) < num_layers, f"model.trainable_layers has block {max(k)}; the model has blocks 0..{num_layers - 1}")
        return list(k)


@dataclass
class LoraSettings:
    """LoRA adapters on the trainable blocks (parameters ``lora.*``)."""

    r: int = 8
    """Rank of each adapter's B·A update."""
    alpha: int = 16
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training."""
    target_modules: str | list[str] = "auto"
    """``auto``: every linear projection of the trainable blocks' token mixers (attention q/k/v/o, Gated
    DeltaNet ``in_proj_*`` / ``out_proj``) and MLPs (shared experts included); or a list of projection names
    (``[q_proj, v_proj]``) inside each trainable block."""
    experts: bool = False
    """Also put LoRA on the routed experts of the trainable blocks (MoE families; through PEFT's
    ``target_parameters``, on the stacked expert weights)."""

    def __post_init__(self) -> None:
        _check(self.r >= 1, f"lora.r={self.r} must be >= 1")
        _check(self.alpha > 0, f"lora.alpha={self.alpha} must be > 0")
        _check(0 <= self.dropout < 1, f"lora.dropout={self.dropout} must be in [0, 1)")
        _check(self.target_modules == "auto" or (isinstance(self.target_modules, (list, tuple)) and len(self.target_modules) > 0
               and all(isinstance(m, str) and m for m in self.target_modules)),
               f"lora.target_modules={self.target_modules!r} must be auto or a non-empty list of module names")
        if self.target_modules != "auto":
            self.target_modules = list(self.target_modules)
        _check(isinstance(self.experts, bool), f"lora.experts={self.experts!r} must be true or false")


@dataclass
class TrainingConfig:
    """The optimisation loop (parameters ``training.*``)."""

    prefix_mode: str = "auto"
    """``auto`` (default): ``cache`` when it pays (more than one epoch, the cache fits on the disk,
    and reading a cached batch is faster than computing it, both measured on the first batches),
    else ``no_grad``; ``no_grad``: frozen prefix run without a graph; ``autograd``: the stock PEFT
    forward, for comparison; ``cache``: prefix output computed once and reused every epoch."""
    epochs: int = 6
    """Passes over the training split."""
    batch_size: int = 16
    """Examples per optimiser step (before gradient accumulation)."""
    eval_batch_size: int = 64
    """Examples per batch in validation, test and prediction."""
    lr: float = 3e-3
    """Peak learning rate of AdamW (adapters and score head)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.06
    """Share of optimiser steps with a linear warm-up; the rest decays linearly to 0."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm); 0 disables."""
    grad_accum_steps: int = 1
    """Batches whose gradients add up before one optimiser step."""
    max_length: int = 128
    """Token limit per text; longer texts are truncated (and counted)."""
    seed: int = 42
    """Seed of the split, the score head's init, the batch order and dropout."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``."""
    log_every: int = 10
    """Optimiser steps between logged training-loss points."""
    progress: bool = True
    """Show progress bars."""
    cache_dir: str = "data/04_feature/prefix_cache"
    """``prefix_mode: cache`` (or ``auto`` choosing it): where the prefix's hidden states are stored (one fingerprinted cache;
    reused while model, block split, tokenizer, max_length, dtype and data are unchanged, else rebuilt)."""
    cache_dtype: str = "auto"
    """``prefix_mode: cache``: dtype of the stored hidden states: ``auto`` (what the prefix computes
    in, the model weights' dtype: exact; bf16 on CUDA under ``model.dtype: auto``), ``float32`` or
    ``bfloat16`` (half the disk of fp32, rounded; works on the CPU too)."""
    bucket_by_length: bool = True
    """``prefix_mode: cache``: batch examples of similar length (less padding), in a seeded random
    batch order; false = the live modes' batches exactly."""
    checkpoint_every: int | None = None
    """Optimiser steps between checkpoints under ``data/06_models/checkpoints/`` (trainable weights,
    optimizer, scheduler, RNG states, position, metric history); 0 or null: only at each epoch's end,
    where one is always written."""
    resume: str = "auto"
    """``auto``: continue the newest complete checkpoint made for this configuration (and its MLflow run);
    ``never``: start over; a checkpoint directory: continue that one, or fail saying what differs."""
    metric_for_best: str = "macro_f1"
    """Validation metric that picks the epoch whose adapter is saved, exported and tested: ``macro_f1``
    or ``accuracy`` (higher wins), ``loss`` (lower wins)."""
    early_stopping_patience: int | None = None
    """Stop once the best epoch lies this many epochs back; null or 0: run every epoch."""

    def __post_init__(self) -> None:
        _check(self.prefix_mode in PREFIX_MODES, f"training.prefix_mode={self.prefix_mode!r} must be one of {', '.join(PREFIX_MODES)}")
        for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum_steps", "max_length", "log_every"):
            _check(getattr(self, name) >= 1, f"training.{name}={getattr(self, name)} must be >= 1")
        _check(self.lr > 0, f"training.lr={self.lr} must be > 0")
        _check(0 <= self.warmup_ratio < 1, f"training.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        _check(self.max_grad_norm >= 0, f"training.max_grad_norm={self.max_grad_norm} must be >= 0")
        _check(self.device in ("auto", "cpu", "cuda"), f"training.device={self.device!r} must be auto, cpu or cuda")
        _check(bool(self.cache_dir), "training.cache_dir must be a directory path")
        _check(self.cache_dtype in ("auto", "float32", "bfloat16"),
               f"training.cache_dtype={self.cache_dtype!r} must be auto, float32 or bfloat16")
        _check(isinstance(self.bucket_by_length, bool), f"training.bucket_by_length={self.bucket_by_length!r} must be true or false")
        _check(self.checkpoint_every is None or (isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0),
               f"training.checkpoint_every={self.checkpoint_every!r} must be a number of steps >= 0 or null")
        _check(isinstance(self.resume, str) and bool(self.resume.strip()),
               f"training.resume={self.resume!r} must be auto, never or a checkpoint directory")
        _check(self.metric_for_best in METRICS_FOR_BEST,
               f"training.metric_for_best={self.metric_for_best!r} must be one of {', '.join(METRICS_FOR_BEST)}")
        _check(self.early_stopping_patience is None or (isinstance(self.early_stopping_patience, int) and self.early_stopping_patience >= 0),
               f"training.early_stopping_patience={self.early_stopping_patience!r} must be a number of epochs >= 0 or null")


@dataclass
class RunConfig:
    """All groups of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RunConfig:
        """From Kedro's full parameter dict (groups ``data``, ``model``, ``lora``, ``training``)."""
        return cls(
            data=from_dict(DataConfig, params.get("data"), "data"),
            model=from_dict(ModelConfig, params.get("model"), "model"),
            lora=from_dict(LoraSettings, params.get("lora"), "lora"),
            training=from_dict(TrainingConfig, params.get("training"), "training"),
        )

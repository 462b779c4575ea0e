"""One pydantic dataclass per parameter group of ``conf/base/parameters*.yml``: a docstring and a default per
field (the only place the defaults live), the type and the allowed range in the annotation.

Strict (:data:`toptune.config.types.STRICT`): a string is not a number (``lr: "3e-3"`` fails), a bool is not
an integer, an integer is a number (``lr: 1`` becomes 1.0), an unknown key is refused. Building a group
validates it; a Kedro parameter dict becomes one through :func:`toptune.config.parse.parse_group`, which
says what is wrong in one line naming the parameter. What no annotation can say (a template naming a
column, K or a list of block indices) is the group's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from toptune.config.types import (
    DEFAULT_MODEL_PATH,
    INSPECT_MODES,
    STRICT,
    BadRows,
    ClassWeights,
    Count,
    Device,
    Dtype,
    HeldOut,
    MetricForBest,
    MissingFields,
    NonBlank,
    NonNegative,
    Positive,
    PrefixMode,
    ProblemType,
    RegressionLoss,
    Share,
    Split,
)
from toptune.errors import ConfigError
from toptune.task import check_metric, default_metric


@dataclass(config=STRICT)
class DataConfig:
    """How the raw table becomes labelled text (parameters ``data.*``)."""

    text_template: str = "Product: {product}\nChannel: {channel}\nReview: {review}"
    """``str.format`` template over the table's columns; each row becomes one text."""
    label_column: NonBlank = "sentiment"
    """Column holding the label: a class (any value; the sorted distinct values become classes), several
    classes (multi-label: a string joined by ``label_separator`` or a list cell) or a number (regression)."""
    problem_type: ProblemType = "single_label_classification"
    """``single_label_classification`` (one class per row), ``multi_label_classification`` (any number of
    classes per row: a sigmoid and a tuned threshold per class) or ``regression`` (one number per row)."""
    label_separator: NonBlank = ";"
    """Multi-label: splits a text label cell into its labels (whitespace around each stripped, empty pieces
    ignored); list cells (Parquet, Hugging Face datasets) are taken as they are."""
    id_column: str | None = "id"
    """Column identifying a row in predictions; None (or absent) = the row number."""
    val_fraction: HeldOut = 0.1
    """Share of rows held out for validation each epoch (stratified)."""
    test_fraction: HeldOut = 0.1
    """Share of rows held out for the final test metrics (stratified)."""
    min_class_rows: Annotated[int, Field(ge=3)] = 10
    """Classes with fewer rows cannot be split into train/val/test: they are dropped and counted (multi-label:
    per label; a row left with no label is dropped). Not used by regression."""
    drop_duplicates: bool = True
    """Drop rows whose text and label repeat an earlier row (counted); False keeps them."""
    bad_rows: BadRows = "drop"
    """Rows with an empty text, a NaN label or a non-string text cell: ``drop`` (counted, logged) or
    ``error`` (fail naming the first bad row and column)."""
    missing_fields: MissingFields = "fill"
    """A blank cell (missing, NaN or whitespace) in one template column: ``fill`` renders it as empty
    text and counts it (``data.filled_missing_<column>``), and a row is empty only when every template
    column is blank; ``drop`` drops the row as ``empty_text`` when any template cell is blank."""
    split_seed: int | None = None
    """Seed of the train / val / test split; None = ``training.seed``. Set it to share one split (and one
    prefix cache) between runs with different training seeds."""
    sample_rows: int | None = None
    """Use about N (> 0) valid rows (quick runs, tests): the first N / classes of each class (at least
    ``min_class_rows``); the rest is counted as ``dropped_sample_rows``. None = all."""
    min_text_tokens: Count = 4
    """A text cut by ``training.max_length`` to fewer tokens than this is near-empty; when more than
    ``short_text_share`` of a split is, the run warns (log + MLflow tag ``warning.short_texts``)."""
    short_text_share: Share = 0.1
    """Share of a split's rows cut to near-empty (see ``min_text_tokens``) above which the run warns."""

    def __post_init__(self) -> None:
        if "{" not in self.text_template:
            raise ConfigError("data.text_template must name at least one {column}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError("data.val_fraction + data.test_fraction must be < 0.9")
        if self.sample_rows is not None and self.sample_rows <= 0:  # docs/reference/errors.md holds this line
            raise ConfigError("data.sample_rows must be > 0 or null")


@dataclass(config=STRICT)
class ModelConfig:
    """Which checkpoint, and which of its blocks train (parameters ``model.*``)."""

    name_or_path: NonBlank = DEFAULT_MODEL_PATH
    """A hub id (``Qwen/Qwen3-0.6B``) or a local directory of a Qwen2 / Qwen2.5 / Qwen3 checkpoint.
    The default path holds the embedded seeded tiny Qwen3, written there on first use."""
    trainable_layers: int | list[int] = 3
    """K (train the top K blocks) or an explicit list of block indices. Blocks below the lowest
    trainable one form the frozen prefix."""
    dtype: Dtype = "auto"
    """Frozen base weights' dtype: ``auto`` (bf16 on a CUDA device that supports it, fp32 on the
    CPU), ``float32`` or ``bfloat16``. LoRA weights, the score head and the optimiser state stay
    fp32 whatever it is (``toptune.model.precision``); on CUDA the forward runs under bf16 autocast."""

    def __post_init__(self) -> None:
        k = self.trainable_layers
        if isinstance(k, int):
            if k < 1:
                raise ConfigError(f"model.trainable_layers={k} must be >= 1")
        elif not k or min(k) < 0:
            raise ConfigError(f"model.trainable_layers={k!r} must be an int K or a non-empty list of block indices")
        else:
            self.trainable_layers = sorted(set(k))

    def trainable_blocks(self, num_layers: int) -> list[int]:
        """The trainable block indices for a model of ``num_layers`` blocks."""
        k = self.trainable_layers
        if isinstance(k, int):
            if k > num_layers:
                raise ConfigError(f"model.trainable_layers={k} exceeds the model's {num_layers} blocks")
            return list(range(num_layers - k, num_layers))
        if max(k) >= num_layers:
            raise ConfigError(f"model.trainable_layers has block {max(k)}; the model has blocks 0..{num_layers - 1}")
        return list(k)


@dataclass(config=STRICT)
class LoraSettings:
    """LoRA adapters on the trainable blocks (parameters ``lora.*``)."""

    r: Count = 8
    """Rank of each adapter's B·A update."""
    alpha: Annotated[int, Field(gt=0)] = 16
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: Share = 0.0
    """Dropout on the adapter's input during training."""
    target_modules: str | list[str] = "auto"
    """``auto``: every linear projection of the trainable blocks' token mixers (attention q/k/v/o, Gated
    DeltaNet ``in_proj_*`` / ``out_proj``) and MLPs (shared experts included); or a list of projection names
    (``[q_proj, v_proj]``) inside each trainable block."""
    experts: bool = False
    """Also put LoRA on the routed experts of the trainable blocks (MoE families; through PEFT's
    ``target_parameters``, on the stacked expert weights)."""

    def __post_init__(self) -> None:
        m = self.target_modules
        if m != "auto" and (isinstance(m, str) or not m or not all(m)):
            raise ConfigError(f"lora.target_modules={m!r} must be auto or a non-empty list of module names")


@dataclass(config=STRICT)
class TrainingConfig:
    """The optimisation loop (parameters ``training.*``)."""

    prefix_mode: PrefixMode = "auto"
    """``auto`` (default): ``cache`` when it pays (more than one epoch, the cache fits on the disk,
    and reading a cached batch is faster than computing it, both measured on the first batches),
    else ``no_grad``; ``no_grad``: frozen prefix run without a graph; ``autograd``: the stock PEFT
    forward, for comparison; ``cache``: prefix output computed once and reused every epoch."""
    epochs: Count = 6
    """Passes over the training split."""
    batch_size: Count = 16
    """Examples per optimiser step (before gradient accumulation)."""
    eval_batch_size: Count = 64
    """Examples per batch in validation, test and prediction."""
    lr: Positive = 3e-3
    """Peak learning rate of AdamW (adapters and score head)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: Share = 0.06
    """Share of optimiser steps with a linear warm-up; the rest decays linearly to 0."""
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0
    """Gradient clipping threshold (global L2 norm); 0 disables."""
    grad_accum_steps: Count = 1
    """Batches whose gradients add up before one optimiser step."""
    max_length: Count = 128
    """Token limit per text; longer texts are truncated (and counted)."""
    seed: int = 42
    """Seed of the score head's init, the batch order and dropout, and of the data split unless
    ``data.split_seed`` is set."""
    device: Device = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``."""
    log_every: Count = 10
    """Optimiser steps between logged training-loss points."""
    progress: bool = True
    """Show progress bars."""
    cache_dir: NonBlank = "data/04_feature/prefix_cache"
    """``prefix_mode: cache`` (or ``auto`` choosing it): where the prefix's hidden states are stored, one
    directory per fingerprint (model, block split, tokenizer, max_length, dtype, data), side by side: every
    run whose fingerprint matches reuses its cache (a seed or lr sweep, two configurations run in turn)."""
    cache_max_bytes: Annotated[int, Field(gt=0)] | None = None
    """The most bytes the caches under ``cache_dir`` may take together: beyond it the least recently used
    go (never one a live process uses); null: keep what fits while the disk keeps 5 % of its size free."""
    cache_verify: Literal["sample", "full"] = "sample"
    """How a reused cache is checked, besides its manifest and every file's size: ``sample`` hashes random
    shards, 256 MiB a reuse (a corrupt shard outside the sample is missed this time, caught by a later
    draw); ``full`` hashes every byte (minutes per hundred GiB)."""
    cache_dtype: Dtype = "auto"
    """``prefix_mode: cache``: dtype of the stored hidden states: ``auto`` (what the prefix computes
    in, the model weights' dtype: exact; bf16 on CUDA under ``model.dtype: auto``), ``float32`` or
    ``bfloat16`` (half the disk of fp32, rounded; works on the CPU too)."""
    bucket_by_length: bool = True
    """``prefix_mode: cache``: batch examples of similar length (less padding), in a seeded random
    batch order; false = the live modes' batches exactly."""
    checkpoint_every: NonNegative | None = None
    """Optimiser steps between checkpoints under ``data/06_models/checkpoints/`` (trainable weights,
    optimizer, scheduler, RNG states, position, metric history); 0 or null: only at each epoch's end,
    where one is always written."""
    resume: NonBlank = "auto"
    """``auto``: continue the newest complete checkpoint made for this configuration (and its MLflow run);
    ``never``: start over; a checkpoint directory: continue that one, or fail saying what differs."""
    metric_for_best: MetricForBest | None = None
    """Validation metric that picks the epoch whose adapter is saved, exported and tested; null = the kind's
    default (``macro_f1`` for classification, ``rmse`` for regression). Single-label: ``macro_f1``,
    ``accuracy``, ``loss``; multi-label: ``macro_f1``, ``micro_f1``, ``subset_accuracy``, ``hamming_loss``,
    ``loss``; regression: ``rmse``, ``mae``, ``r2``, ``spearman``, ``pearson``, ``loss`` (``loss``, ``rmse``,
    ``mae``, ``hamming_loss``: lower wins)."""
    class_weights: ClassWeights | dict[str | int, Positive] = "none"
    """Classification: ``none``; ``balanced`` (scikit-learn's ``n / (C · n_c)`` on the training split as
    cross-entropy weights; multi-label: ``pos_weight = negatives / positives`` per class); or a mapping
    class → weight (classes left out weigh 1). The weights used are logged and kept in the bundle."""
    regression_loss: RegressionLoss = "mse"
    """Regression, on the standardised target: ``mse`` (half the squared error, so a row's gradient is its
    error) or ``huber`` (the same below 1 standard deviation, linear beyond: for outliers)."""
    calibrate: bool = True
    """Classification: fit a temperature on the validation split after the kept epoch (L-BFGS on its NLL)
    and apply it in evaluate, predict and serve; ECE before and after is logged."""
    thresholds: Literal["tune"] | Annotated[float, Field(gt=0, lt=1)] = "tune"
    """Multi-label: ``tune`` (per class, the threshold that maximises its validation F1, after calibration;
    0.5 for a class with no validation positive) or one probability in (0, 1) for every class."""
    early_stopping_patience: NonNegative | None = None
    """Stop once the best epoch lies this many epochs back; null or 0: run every epoch."""


@dataclass(config=STRICT)
class ExportConfig:
    """The ``export`` pipeline (parameters ``export.*``)."""

    check_rows: NonNegative = 64
    """Example rows of the bundle on which the merged model's logits are compared with the adapter's; 0 skips."""
    merge_atol: Positive = 1e-4
    """Largest allowed |merged logit - adapter logit| (fp32); the export fails beyond it."""
    registered_model_name: str | None = "toptune-classifier"
    """Register the pyfunc model under this name when the store has a registry; null = don't."""
    example_rows: Count = 5
    """Example rows of the bundle saved as the pyfunc model's input example (and used to infer the signature)."""
    bad_rows: BadRows = "error"
    """Default policy of the pyfunc / REST model for bad rows (``error`` | ``drop``); a request can
    override it with ``params: {bad_rows: drop}``."""
    batch_size: Count = 64
    """Default rows per forward pass of the pyfunc / REST model."""


@dataclass(config=STRICT)
class PredictConfig:
    """The ``predict`` pipeline (parameters ``predict.*``)."""

    batch_size: Count = 64
    """Rows per forward pass."""
    bad_rows: BadRows = "drop"
    """Rows with an empty / NaN text cell or a non-string cell in a text column: ``drop`` (skipped,
    counted, logged) or ``error`` (fail naming the first bad row and column)."""
    device: Device = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``."""
    progress: bool = True
    """Show a progress bar."""


@dataclass(config=STRICT)
class InspectConfig:
    """What ``kedro run --pipeline inspect`` measures (parameters ``inspect.*``)."""

    batch_size: Count = 8
    """Examples in the measured batch: the first N of ``split``, padded as training pads them."""
    split: Split = "train"
    """Tokenised split the batch comes from."""
    modes: list[str] = dataclasses.field(default_factory=list)
    """Modes to measure (a subset of ``full``, ``lora_all``, ``topk_autograd``, ``topk_autograd_input_grads``,
    ``topk_no_grad``, ``topk_cached``); empty = all."""
    timing_repeats: Count = 3
    """Timed forward + backward runs per mode after the measured one; the median is reported."""

    def __post_init__(self) -> None:
        bad = sorted(set(self.modes) - set(INSPECT_MODES))
        if bad:
            raise ConfigError(f"inspect.modes: unknown mode {bad[0]!r}; known: {', '.join(INSPECT_MODES)}")


@dataclass(config=STRICT)
class ProbeConfig:
    """What ``kedro run --pipeline probe`` fits (parameters ``probe.*``): a linear probe on each block's output of
    the base model, to see where the task's information lives before choosing ``model.trainable_layers``."""

    batch_size: Count = 32
    """Examples per no_grad forward pass of the base model (padded to the batch's longest row)."""
    max_rows: Count | None = 2000
    """At most this many rows of each of the train and validation splits (a sample seeded by ``training.seed``);
    null = all. The pooled vectors take rows × blocks × hidden × 4 bytes per split in memory."""
    tolerance: Annotated[float, Field(ge=0)] = 0.01
    """A block whose validation value is within this of the best block's (in the metric's units) has caught up:
    the first such block ends the frozen prefix of the recommended K."""
    max_iter: Count = 500
    """Iterations of each LogisticRegression fit (lbfgs); a fit stopped there is marked ``converged: false``."""
    regularization: Positive = 1.0
    """L2 strength on the standardised vectors: LogisticRegression's C is 1 / it, Ridge's alpha is it."""


SWEPT_GROUPS = ("training", "lora", "model")
"""The groups whose keys ``sweep.space`` may draw."""


@dataclass(config=STRICT)
class SweepConfig:
    """What ``kedro run --pipeline sweep`` tries (parameters ``sweep.*``): Optuna trials (TPE or a grid, seeded by
    ``training.seed``) of the training run, every one on the one prefix cache of the data."""

    trials: Count = 20
    """Trials of the study in all, complete or pruned, over every invocation and machine: a sweep started again
    with the same study runs only the trials still missing."""
    space: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {
            "training.lr": {"low": 3e-4, "high": 1e-2, "log": True},
            "lora.r": {"choices": [4, 8, 16]},
        }
    )
    """Dotted parameter → ``{low, high, log}`` (integers when both bounds are, else floats; ``log``: on a log
    scale) or ``{choices: [...]}``, over any ``training.*``, ``lora.*`` or ``model.*`` key
    (``model.trainable_layers``: the cache is built once, at the deepest K the space holds)."""
    metric: NonBlank | None = None
    """The validation metric a trial is scored by (at its kept epoch); null = ``training.metric_for_best``."""
    storage: NonBlank | None = None
    """An Optuna storage URL; null = ``sqlite:///data/06_models/sweep/optuna.db``. Several machines running
    one sweep share one RDB URL (PostgreSQL, MySQL), each with its own prefix cache."""
    study: NonBlank = "toptune"
    """The study's name in the storage: the same name continues the sweep, another starts a new one."""
    prune: bool = True
    """Stop a trial whose validation metric at an epoch is worse than the median of the earlier trials' at that
    epoch (Optuna's median pruner; from the third trial, after the first epoch)."""
    sampler: Literal["tpe", "grid"] = "tpe"
    """How trials draw their values: ``tpe`` (Optuna's TPE, seeded by ``training.seed``), or ``grid`` (every
    combination of the space once, in a seeded order; every dimension must be ``{choices: [...]}``, and the
    study ends when the grid is done even if ``sweep.trials`` is larger), e.g. a sweep over K."""

    def __post_init__(self) -> None:
        for name, spec in self.space.items():
            check_dimension(name, spec)
        if self.sampler == "grid":
            ranged = [name for name, spec in self.space.items() if "choices" not in spec]
            if ranged:
                raise ConfigError(
                    f"sweep.sampler grid needs {{choices: [...]}} for every dimension; {ranged[0]} is a range"
                )


def check_dimension(name: str, spec: dict[str, Any]) -> None:
    """One entry of ``sweep.space``: a known ``training`` / ``lora`` / ``model`` key and a well-formed range."""
    group, _, key = name.partition(".")
    known = {f.name for f in dataclasses.fields(GROUPS[group])} if group in SWEPT_GROUPS else set()
    if key not in known:
        raise ConfigError(
            f"sweep.space names {name!r}, which is not a parameter of {', '.join(SWEPT_GROUPS)} (e.g. training.lr)"
        )
    if set(spec) == {"choices"}:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"sweep.space.{name}.choices must be a non-empty list")
        return
    if not ({"low", "high"} <= set(spec) <= {"low", "high", "log"}):
        raise ConfigError(f"sweep.space.{name} must be {{low, high, log}} or {{choices: [...]}}, not {spec!r}")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise ConfigError(f"sweep.space.{name}: low={low!r} must be a number below high={high!r}")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"sweep.space.{name}: a log scale needs low > 0, not {low!r}")


@dataclass(config=STRICT)
class RunConfig:
    """Every parameter group of a run, typed: what :func:`toptune.config.parse.parse_params` makes of Kedro's
    parameters, once, before any node runs."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    predict: PredictConfig = dataclasses.field(default_factory=PredictConfig)
    inspect: InspectConfig = dataclasses.field(default_factory=InspectConfig)
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    sweep: SweepConfig = dataclasses.field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        check_kind(self.data, self.training)
        if self.sweep.metric is not None:
            check_metric(self.sweep.metric, self.data.problem_type, "sweep.metric")


def check_kind(data: DataConfig, training: TrainingConfig) -> None:
    """The parameters that depend on ``data.problem_type``, checked against it, and ``training.metric_for_best``
    filled with the kind's default when it is null (``training`` is updated in place)."""
    kind = data.problem_type
    if kind == "regression":
        if training.class_weights != "none":
            raise ConfigError("training.class_weights applies to classification; data.problem_type is regression")
        if training.thresholds != "tune":
            raise ConfigError(
                "training.thresholds applies to multi-label classification; data.problem_type is regression"
            )
    elif training.regression_loss != "mse":
        raise ConfigError(f"training.regression_loss applies to regression; data.problem_type is {kind}")
    if kind == "single_label_classification" and training.thresholds != "tune":
        raise ConfigError(
            "training.thresholds applies to multi-label classification; data.problem_type is single-label"
        )
    if training.metric_for_best is None:
        training.metric_for_best = default_metric(kind)  # type: ignore[assignment]  # one of METRICS[kind]
    check_metric(str(training.metric_for_best), kind)


GROUPS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "lora": LoraSettings,
    "training": TrainingConfig,
    "export": ExportConfig,
    "predict": PredictConfig,
    "inspect": InspectConfig,
    "probe": ProbeConfig,
    "sweep": SweepConfig,
}
"""Every parameter group and its dataclass (``training`` → :class:`TrainingConfig`); a group not named here
is refused (a misspelt ``trainig``)."""

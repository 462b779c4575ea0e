"""The words the parameter groups are written in (:mod:`toptune.config.groups`): pydantic's strict mode,
the choices of each string parameter (``Literal``) and the ranges of the numbers (``Field`` bounds)."""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

STRICT = ConfigDict(strict=True, extra="forbid", use_attribute_docstrings=True)
"""Every group's validation: no coercion but int → float, unknown keys refused, the field docstrings kept
as the fields' descriptions (``docs/reference/parameters.md`` is written from them)."""

DEFAULT_MODEL_PATH = "data/06_models/tiny-qwen3"
"""Where the embedded default (seeded tiny Qwen3 + offline Qwen tokenizer) is written on first use."""

PrefixMode = Literal["auto", "no_grad", "autograd", "cache"]
PREFIX_MODES: tuple[str, ...] = typing.get_args(PrefixMode)
"""How the frozen prefix runs (``training.prefix_mode``)."""
MetricForBest = Literal[
    "macro_f1",
    "accuracy",
    "loss",
    "micro_f1",
    "subset_accuracy",
    "hamming_loss",
    "rmse",
    "mae",
    "r2",
    "spearman",
    "pearson",
]
METRICS_FOR_BEST: tuple[str, ...] = typing.get_args(MetricForBest)
"""Validation metrics that can pick the kept epoch (``training.metric_for_best``)."""
ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]
"""What one row's label is (``data.problem_type``): transformers' own names."""
ClassWeights = Literal["none", "balanced"]
RegressionLoss = Literal["mse", "huber"]
BadRows = Literal["drop", "error"]
BAD_ROW_POLICIES: tuple[str, ...] = typing.get_args(BadRows)
"""What becomes of a row with an empty or non-string text cell (``data.bad_rows``, ``predict.bad_rows``, …)."""
MissingFields = Literal["fill", "drop"]
"""What a blank cell of one template column does to its row (``data.missing_fields``)."""
Device = Literal["auto", "cpu", "cuda"]
Dtype = Literal["auto", "float32", "bfloat16"]
Split = Literal["train", "val", "test"]
INSPECT_MODES = ("full", "lora_all", "topk_autograd", "topk_autograd_input_grads", "topk_no_grad", "topk_cached")
"""The modes ``kedro run --pipeline inspect`` can measure (``inspect.modes``)."""

Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(ge=0, lt=1)]
HeldOut = Annotated[float, Field(gt=0, lt=0.5)]
NonBlank = Annotated[str, Field(pattern=r"\S")]

"""Typed run configuration: one pydantic dataclass per parameter group of ``conf/base/parameters*.yml``
(:mod:`toptune.config.groups`, in the words of :mod:`toptune.config.types`), parsed once from Kedro's
parameters (:mod:`toptune.config.parse`), and the parameter reference written from their docstrings
(:mod:`toptune.config.reference`)."""

from toptune.config.groups import (
    GROUPS,
    DataConfig,
    ExportConfig,
    InspectConfig,
    LoraSettings,
    ModelConfig,
    PredictConfig,
    ProbeConfig,
    RunConfig,
    SweepConfig,
    TrainingConfig,
)
from toptune.config.parse import parse_group, parse_params
from toptune.config.types import (
    BAD_ROW_POLICIES,
    DEFAULT_MODEL_PATH,
    INSPECT_MODES,
    METRICS_FOR_BEST,
    PREFIX_MODES,
    STRICT,
    BadRows,
    Device,
    Dtype,
    MetricForBest,
    PrefixMode,
)
from toptune.errors import ConfigError

__all__ = [
    "BAD_ROW_POLICIES",
    "DEFAULT_MODEL_PATH",
    "GROUPS",
    "INSPECT_MODES",
    "METRICS_FOR_BEST",
    "PREFIX_MODES",
    "STRICT",
    "BadRows",
    "ConfigError",
    "DataConfig",
    "Device",
    "Dtype",
    "ExportConfig",
    "InspectConfig",
    "LoraSettings",
    "MetricForBest",
    "ModelConfig",
    "PredictConfig",
    "PrefixMode",
    "ProbeConfig",
    "SweepConfig",
    "RunConfig",
    "TrainingConfig",
    "parse_group",
    "parse_params",
]

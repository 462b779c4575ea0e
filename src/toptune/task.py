"""What the head predicts and how its outputs become answers: the problem type (transformers' names), the
classes, and what training fitted around the head (class weights, target scaling, temperature, thresholds).

One :class:`Task` travels from the data step to the served model: the train node makes it
(:func:`make_task`, from the training split), calibration fills in ``temperature`` and ``thresholds``
after the kept epoch, the bundle's ``toptune.json`` records every field, and predict / pyfunc / REST answer
through :meth:`Task.answers`. Plain data and numpy: no torch, no Kedro.

===============================  ============================  ==================================  =================
problem type                     stored label (per row)        head (C outputs)                    answer columns
===============================  ============================  ==================================  =================
``single_label_classification``  class index, int32            softmax over C classes              ``label, prob_*``
``multi_label_classification``   multi-hot, (C,) uint8         a sigmoid per class, C thresholds   ``labels, prob_*``
``regression``                   value, float32                one output, standardised target     ``prediction``
===============================  ============================  ==================================  =================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from toptune.errors import ConfigError

SINGLE = "single_label_classification"
MULTI = "multi_label_classification"
REGRESSION = "regression"
PROBLEM_TYPES = (SINGLE, MULTI, REGRESSION)

METRICS = {
    SINGLE: ("macro_f1", "accuracy", "loss"),
    MULTI: ("macro_f1", "micro_f1", "subset_accuracy", "hamming_loss", "loss"),
    REGRESSION: ("rmse", "mae", "r2", "spearman", "pearson", "loss"),
}
"""Validation metrics each kind computes per epoch (``training.metric_for_best`` picks one; the first is the
default)."""
LOWER_IS_BETTER = frozenset({"loss", "rmse", "mae", "hamming_loss"})
"""Metrics where a smaller value wins."""


def default_metric(problem_type: str) -> str:
    """``training.metric_for_best`` when it is null: ``macro_f1`` for classification, ``rmse`` for regression."""
    return METRICS[problem_type][0]


def check_metric(metric: str, problem_type: str, parameter: str = "training.metric_for_best") -> None:
    """Fail naming ``parameter`` when ``metric`` is not one ``problem_type`` computes (``accuracy`` for regression)."""
    if metric not in METRICS[problem_type]:
        choices = ", ".join(repr(m) for m in METRICS[problem_type])
        raise ConfigError(
            f"{parameter}={metric!r} is not a {problem_type} metric (data.problem_type); choose one of {choices}"
        )


@dataclass
class Task:
    """What the head predicts (``toptune.json`` keeps every field)."""

    problem_type: str = SINGLE
    """``single_label_classification`` | ``multi_label_classification`` | ``regression`` (``data.problem_type``)."""
    id2label: dict[int, str] = field(default_factory=dict)
    """Output index → class name; a regression head has one output, named after the label column."""
    label_separator: str = ";"
    """Multi-label: joins the predicted labels in the ``labels`` column (``data.label_separator``)."""
    class_weights: list[float] | None = None
    """Per class: the cross-entropy weight (single-label) or the positive weight of BCE (multi-label); None = 1."""
    target_mean: float = 0.0
    """Regression: the training split's mean target; the head predicts ``(y - mean) / std``."""
    target_std: float = 1.0
    """Regression: the training split's target standard deviation."""
    temperature: float = 1.0
    """Classification: logits are divided by it before softmax / sigmoid (fitted on the validation split)."""
    thresholds: list[float] | None = None
    """Multi-label: per class, the probability at or above which it is predicted (tuned on validation)."""

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def classifies(self) -> bool:
        return self.problem_type != REGRESSION

    def names(self) -> list[str]:
        """Class (output) names in index order."""
        return [self.id2label[i] for i in sorted(self.id2label)]

    def check(self) -> None:
        """Fail in one line when the parts disagree (a threshold or weight per class count that is not the head's)."""
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type {self.problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if self.problem_type == REGRESSION:
            if self.num_labels != 1 or self.class_weights or self.thresholds:
                raise ValueError(
                    f"a regression head has 1 output and no class weights or thresholds, not {self.num_labels}"
                )
            if not (self.target_std > 0 and math.isfinite(self.target_mean)):
                raise ValueError(f"target scaling mean={self.target_mean}, std={self.target_std} is not usable")
            return
        for name, values in (("class_weights", self.class_weights), ("thresholds", self.thresholds)):
            if values is not None and len(values) != self.num_labels:
                raise ValueError(f"{len(values)} {name} for a head of {self.num_labels} classes")
        if self.thresholds is not None and self.problem_type != MULTI:
            raise ValueError("thresholds apply to multi-label classification only")
        if not self.temperature > 0:
            raise ValueError(f"temperature {self.temperature} must be > 0")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "id2label": {str(k): v for k, v in self.id2label.items()}}

    @classmethod
    def from_dict(cls, raw: Mapping) -> Task:
        names = {f.name for f in dataclasses.fields(cls)}
        task = cls(**{k: v for k, v in raw.items() if k in names})
        task.id2label = {int(k): v for k, v in task.id2label.items()}
        return task

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, C) float32: softmax (single-label) or a sigmoid per class (multi-label) of ``logits / temperature``."""
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        if self.problem_type == MULTI:
            return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # the sigmoid, without overflow
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)

    def cutoffs(self) -> list[float]:
        """Multi-label: each class's threshold (0.5 before tuning)."""
        return list(self.thresholds) if self.thresholds is not None else [0.5] * self.num_labels

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        """Multi-label: (N, C) bool, each class at or above its threshold."""
        return probs >= np.asarray(self.cutoffs())[None, :]

    def label_texts(self, chosen: np.ndarray) -> list[str]:
        """Multi-label: per row of (N, C) bool, its classes joined by ``label_separator``."""
        names = self.names()
        return [self.label_separator.join(n for n, on in zip(names, row, strict=True) if on) for row in chosen]

    def values(self, logits: np.ndarray) -> np.ndarray:
        """Regression: (N,) predictions on the target's own scale."""
        return (np.asarray(logits, dtype=np.float64)[:, 0] * self.target_std + self.target_mean).astype(np.float32)

    def columns(self) -> list[str]:
        """The answer columns after ``id``."""
        if self.problem_type == REGRESSION:
            return ["prediction"]
        first = "labels" if self.problem_type == MULTI else "label"
        return [first] + [f"prob_{n}" for n in self.names()]

    def answers(self, ids: list[str], logits: np.ndarray) -> pd.DataFrame:
        """One row per id: ``id, label, prob_<class>…`` | ``id, labels, prob_<class>…`` | ``id, prediction``."""
        if not len(ids):
            return pd.DataFrame(
                {c: pd.Series(dtype=str if c in ("label", "labels") else np.float32) for c in ["id", *self.columns()]}
            ).astype({"id": str})
        if self.problem_type == REGRESSION:
            return pd.DataFrame({"id": ids, "prediction": self.values(logits)})
        probs, names = self.probabilities(logits), self.names()
        if self.problem_type == MULTI:
            first = {"labels": self.label_texts(self.decisions(probs))}
        else:
            first = {"label": [names[int(i)] for i in probs.argmax(-1)]}
        out = pd.DataFrame({"id": ids, **first})
        for c, name in enumerate(names):
            out[f"prob_{name}"] = probs[:, c]
        return out


def class_weights(setting: str | Mapping, task: Task, counts: np.ndarray, rows: int) -> list[float] | None:
    """The weights ``training.class_weights`` asks for, from the training split's per-class positive ``counts``
    (C,) of ``rows`` rows: ``none`` → None; ``balanced`` → scikit-learn's ``n / (C · n_c)`` (single-label) or
    BCE's ``pos_weight = (n − n_c) / n_c`` (multi-label, 1 for a class with no positive); a mapping class →
    weight (classes it leaves out weigh 1)."""
    if setting == "none":
        return None
    names = task.names()
    if isinstance(setting, Mapping):
        given = {str(k): float(v) for k, v in setting.items()}
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ConfigError(
                f"training.class_weights names class {unknown[0]!r}, which the training split lacks "
                f"(classes: {', '.join(names[:20])}{', …' if len(names) > 20 else ''})"
            )
        return [given.get(n, 1.0) for n in names]
    counts = np.asarray(counts, dtype=np.float64)
    if task.problem_type == MULTI:
        return [float((rows - c) / c) if c else 1.0 for c in counts]
    from sklearn.utils.class_weight import compute_class_weight  # only here: sklearn's import is heavy

    labels = np.repeat(np.arange(len(counts)), counts.astype(np.int64))
    present = np.flatnonzero(counts)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    out = np.ones(len(counts))
    out[present] = weights
    return [float(w) for w in out]

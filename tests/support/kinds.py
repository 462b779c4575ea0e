"""The three label kinds on the tests' splits: each split's sentiment class (0 negative, 1 neutral,
2 positive) turned into a multi-hot row or a rating, and the classifier and task of each kind.

- multi-label: the class, and for every second row the next class too (3 labels, rows with 1 or 2);
- regression: a rating ``1 + 2·class`` (1, 3, 5) plus a jitter of ±0.45 from the row's position.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from support.classifiers import ID2LABEL, classifier
from toptune.config import DataConfig, TrainingConfig
from toptune.data.tokens import Encoded
from toptune.task import MULTI, PROBLEM_TYPES, REGRESSION, SINGLE, Task
from toptune.train.objective import make_task

KINDS = PROBLEM_TYPES


def relabel(enc: Encoded, kind: str) -> Encoded:
    """``enc`` with its single-label classes turned into ``kind``'s stored labels."""
    classes = np.asarray(enc.labels, dtype=np.int64)  # (N,)
    if kind == SINGLE:
        return enc
    if kind == MULTI:
        hot = np.zeros((len(classes), len(ID2LABEL)), np.uint8)  # (N, 3)
        rows = np.arange(len(classes))
        hot[rows, classes] = 1
        hot[rows[::2], (classes[::2] + 1) % len(ID2LABEL)] = 1
        return dataclasses.replace(enc, labels=hot)
    jitter = ((np.arange(len(classes)) * 7919) % 91 - 45) / 100  # (N,) in [-0.45, 0.45]
    return dataclasses.replace(enc, labels=(1.0 + 2.0 * classes + jitter).astype(np.float32))


def relabelled(data: dict[str, Encoded], kind: str) -> dict[str, Encoded]:
    return {name: relabel(enc, kind) for name, enc in data.items()}


def id2label(kind: str) -> dict[int, str]:
    return {0: "rating"} if kind == REGRESSION else dict(ID2LABEL)


def kind_task(kind: str, train: Encoded, **training) -> Task:
    """``kind``'s task made from the training split as the train node makes it (class weights per
    ``training``, the target's mean and std)."""
    cfg = DataConfig(problem_type=kind, label_column="rating" if kind == REGRESSION else "sentiment")
    return make_task(cfg, TrainingConfig(**training), id2label(kind), train.labels)


def kind_classifier(path, kind: str, data: dict[str, Encoded], k: int = 2, seed: int = 0, **training):
    """The tiny classifier of ``kind`` with random adapter weights and its task."""
    clf = classifier(path, k, seed, problem_type=kind, id2label=id2label(kind))
    clf.task = kind_task(kind, data["train"], **training)
    return clf

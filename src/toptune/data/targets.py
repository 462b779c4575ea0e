"""What each kept row stores as its label, per problem type, decided once the pass over the table is done
(the classes are only known then): the head's outputs (``classes``), a function from row positions to the
stored labels, and the codes the data split stratifies on.

=============  =================================  ===================================================
kind           stored per row                     stratified on
=============  =================================  ===================================================
single-label   class index, int32                 the class
multi-label    multi-hot over the classes, uint8  nothing (scikit-learn stratifies one label per row)
regression     the number, float32                its quintile (from 50 rows; fewer: not stratified)
=============  =================================  ===================================================

Multi-label rows are numbered by their label *set* during the pass (one canonical text per set); a sparse
set × label matrix turns a set index into its multi-hot row, so memory grows with the distinct sets, not
the rows × classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from toptune.config import DataConfig
from toptune.data.split import Kept
from toptune.errors import DataValidationError
from toptune.task import MULTI, REGRESSION

REGRESSION_BINS = 5
"""Quantile bins a regression split is stratified on (when every split can hold one of each)."""
MIN_BINNED_ROWS = 50


@dataclass
class Targets:
    classes: list[str]
    """The head's outputs in index order (a regression head's one output is named after the label column)."""
    of: Callable[[np.ndarray], np.ndarray]
    """Positions among the valid rows → their stored labels ``(n,)`` or ``(n, C)``."""
    dtype: str
    shape: tuple[int, ...]
    """One row's label shape: ``()``, or ``(C,)`` for multi-hot."""
    strata: np.ndarray
    """(kept,) int64 codes the split stratifies on (zeros when it is not stratified)."""
    strata_names: list[str]
    stratified: bool


def targets_of(cfg: DataConfig, names: list[str], seen: np.ndarray, kept: Kept, values: np.ndarray | None) -> Targets:
    """The stored labels of ``data.problem_type``; ``names`` lists the canonical label texts in order of first
    appearance, ``seen`` (valid rows,) their index per row, ``values`` a regression column's numbers. A
    multi-label run drops labels with fewer than ``data.min_class_rows`` rows, and then the rows left with
    none: ``kept`` is updated in place (``rows``, ``dropped_small_class``)."""
    if cfg.problem_type == MULTI:
        return _multi(cfg, names, seen, kept)
    if cfg.problem_type == REGRESSION:
        assert values is not None  # read_rows keeps a regression column's numbers
        return _regression(cfg, values, kept)
    classes, codes = class_codes(names, seen, kept.rows)
    strata = codes[kept.rows].astype(np.int64)
    return Targets(classes, lambda pos: codes[pos], "int32", (), strata, classes, True)


def class_codes(names: list[str], seen: np.ndarray, kept: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The classes (sorted labels of the kept rows) and every valid row's index among them (-1 for a class
    no kept row has): ``seen`` numbers labels in order of first appearance, as ``names`` lists them."""
    present = np.unique(seen[kept])
    classes = sorted(names[c] for c in present)
    index = np.full(len(names), -1, dtype=np.int32)
    index[present] = [classes.index(names[c]) for c in present]
    return classes, index[seen]


def label_sets(names: list[str], separator: str) -> tuple[list[str], sparse.csr_matrix]:
    """The labels (sorted) and the (sets, labels) 0/1 matrix of the canonical label-set texts ``names``."""
    sets = [n.split(separator) if n else [] for n in names]
    labels = sorted({x for s in sets for x in s})
    index = {x: i for i, x in enumerate(labels)}
    cols = np.fromiter((index[x] for s in sets for x in s), np.int64)
    starts = np.cumsum([0, *map(len, sets)])
    return labels, sparse.csr_matrix((np.ones(len(cols), np.uint8), cols, starts), shape=(len(names), len(labels)))


def _multi(cfg: DataConfig, names: list[str], seen: np.ndarray, kept: Kept) -> Targets:
    labels, member = label_sets(names, cfg.label_separator)  # (sets, labels)
    rows_per_label = np.bincount(seen[kept.rows], minlength=len(names)) @ member  # (labels,)
    keep = np.flatnonzero(rows_per_label >= cfg.min_class_rows)
    if len(keep) < 2:
        counts = dict(sorted(zip(labels, map(int, rows_per_label), strict=True), key=lambda x: -x[1])[:10])
        raise DataValidationError(
            f"data.label_column='{cfg.label_column}': fewer than 2 labels have >= {cfg.min_class_rows} rows "
            f"(data.min_class_rows); label counts: {counts}"
        )
    member = member[:, keep].tocsr()  # (sets, classes)
    empty = member.getnnz(axis=1)[seen[kept.rows]] == 0  # (kept,) rows whose every label was too rare
    kept.counts["dropped_small_class"] += int(empty.sum())
    kept.rows = kept.rows[~empty]
    classes = [labels[i] for i in keep]
    n = len(kept.rows)
    return Targets(
        classes,
        lambda pos: member[seen[pos]].toarray().astype(np.uint8),  # (n, C) multi-hot
        "uint8",
        (len(classes),),
        np.zeros(n, np.int64),
        ["rows"],
        False,
    )


def _regression(cfg: DataConfig, values: np.ndarray, kept: Kept) -> Targets:
    v = values[kept.rows]
    if len(v) and float(np.ptp(v)) == 0.0:
        raise DataValidationError(
            f"data.label_column='{cfg.label_column}' is constant ({v[0]:g} in every kept row): a regression "
            "needs targets that vary"
        )
    binned = len(v) >= MIN_BINNED_ROWS
    strata = pd.qcut(v, REGRESSION_BINS, labels=False, duplicates="drop") if binned else np.zeros(len(v))
    strata = np.asarray(strata, dtype=np.int64)
    return Targets(
        [cfg.label_column],
        lambda pos: values[pos].astype(np.float32),
        "float32",
        (),
        strata,
        [f"quantile {i}" for i in range(int(strata.max()) + 1 if len(strata) else 1)],
        binned,
    )

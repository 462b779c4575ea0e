"""Which valid rows are kept, and the stratified, seeded data split — on arrays of row keys, never on
the texts: a 64-bit hash of each row's (text, label) finds duplicates, a hash of its text alone finds
texts given different labels, a class index per row counts and stratifies.

Two different rows share a 64-bit hash with probability about n² / 2⁶⁵ (3·10⁻⁸ at a million rows); such
a row would be counted as a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from toptune.config import DataConfig
from toptune.data.table import SPLITS, check_split_sizes
from toptune.errors import DataValidationError


def row_hashes(texts: list[str], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(text, pair)``: (n,) uint64 hashes of each text and of each (text, label) pair (pandas' siphash)."""
    text = pd.util.hash_array(np.asarray(texts, dtype=object), categorize=False)
    pair = pd.util.hash_pandas_object(pd.DataFrame({"text": texts, "label": labels}), index=False)
    return text, pair.to_numpy(dtype=np.uint64)


def first_of_each(keys: np.ndarray) -> np.ndarray:
    """(n,) bool: True at the first occurrence of each distinct key."""
    first = np.zeros(len(keys), dtype=bool)
    first[np.unique(keys, return_index=True)[1]] = True
    return first


def repeated(keys: np.ndarray) -> np.ndarray:
    """(n,) bool: True where a key occurs more than once."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


def rank_in_class(codes: np.ndarray) -> np.ndarray:
    """(n,) int64: how many earlier rows have the same class (0 for a class's first row)."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - group_start
    return rank


@dataclass
class Kept:
    """Rows kept by :func:`select_rows`, as positions among the valid rows, and the counts."""

    rows: np.ndarray
    """(kept,) int64 positions among the valid rows, ascending."""
    counts: dict[str, int]
    """``dropped_duplicates``, ``conflicting_labels``, ``dropped_small_class``, ``dropped_sample_rows``."""


def select_rows(
    text_hash: np.ndarray, pair_hash: np.ndarray, codes: np.ndarray, names: list[str], cfg: DataConfig
) -> Kept:
    """Duplicates dropped (first kept), texts with several labels counted, classes with fewer than
    ``data.min_class_rows`` rows dropped, the ``data.sample_rows`` cap taken (the first rows of each class).
    Multi-label and regression rows have no one class: the cap takes the first rows (multi-label labels
    are counted afterwards, :func:`toptune.data.targets.targets_of`)."""
    rows = np.arange(len(codes), dtype=np.int64)
    counts = {}
    keep = first_of_each(pair_hash) if cfg.drop_duplicates else np.ones(len(rows), bool)
    counts["dropped_duplicates"] = int((~keep).sum())
    rows = rows[keep]
    counts["conflicting_labels"] = (
        int(repeated(text_hash[rows]).sum()) if cfg.drop_duplicates else _conflicts(text_hash, pair_hash)
    )
    if cfg.problem_type != "single_label_classification":  # no class per row: the rows as they come
        counts["dropped_small_class"] = 0
        before = len(rows)
        rows = rows[: cfg.sample_rows] if cfg.sample_rows else rows
        counts["dropped_sample_rows"] = before - len(rows)
        return Kept(rows, counts)
    class_rows = np.bincount(codes[rows], minlength=len(names))
    small = class_rows < cfg.min_class_rows
    drop = small[codes[rows]]
    counts["dropped_small_class"] = int(drop.sum())
    rows = rows[~drop]
    if int((~small & (class_rows > 0)).sum()) < 2:
        by_count = sorted(((names[c], int(n)) for c, n in enumerate(class_rows) if n), key=lambda x: -x[1])
        raise DataValidationError(
            f"data.label_column='{cfg.label_column}': fewer than 2 classes have >= {cfg.min_class_rows} "
            f"valid rows (data.min_class_rows); class counts: {dict(by_count)}"
        )
    before = len(rows)
    if cfg.sample_rows:
        classes = int((~small & (class_rows > 0)).sum())
        rows = rows[rank_in_class(codes[rows]) < max(cfg.min_class_rows, cfg.sample_rows // classes)]
    counts["dropped_sample_rows"] = before - len(rows)
    return Kept(rows, counts)


def _conflicts(text_hash: np.ndarray, pair_hash: np.ndarray) -> int:
    """Rows whose text another row has under a different label (duplicates kept): among distinct
    (text, label) pairs, a text seen twice has two labels."""
    firsts = text_hash[first_of_each(pair_hash)]
    clashing = np.unique(firsts[repeated(firsts)])
    return int(np.isin(text_hash, clashing).sum())


def split_rows(
    codes: np.ndarray, cfg: DataConfig, seed: int, names: list[str], stratified: bool = True
) -> dict[str, np.ndarray]:
    """Seeded train / val / test split of rows with stratum ``codes`` (a class, a quantile; stratified unless
    ``stratified`` is False): per split the row positions in split order (scikit-learn's
    ``train_test_split``, as on a table of those rows). Sizes are checked first: one line naming the fraction."""
    counts = np.bincount(codes, minlength=len(names))
    check_split_sizes(
        {names[c]: int(n) for c, n in enumerate(counts) if n} if stratified else {"rows": len(codes)}, cfg
    )
    rows = np.arange(len(codes), dtype=np.int64)
    strata = codes if stratified else None
    rest, test = train_test_split(rows, test_size=cfg.test_fraction, stratify=strata, random_state=seed)
    val_share = cfg.val_fraction / (1 - cfg.test_fraction)
    strata = codes[rest] if stratified else None
    train, val = train_test_split(rest, test_size=val_share, stratify=strata, random_state=seed)
    return dict(zip(SPLITS, (train, val, test), strict=True))

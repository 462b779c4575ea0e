"""The raw table, validated and serialised one batch at a time: columns checked once, cells checked and
rows counted by drop reason, the template rendered. Every function here takes one batch (a pandas
DataFrame of at most :data:`toptune.data.read.BATCH_ROWS` rows), so memory never grows with the table."""

from __future__ import annotations

import math
import string
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from toptune.config import DataConfig
from toptune.data.labels import bad_labels
from toptune.errors import DataValidationError

SPLITS = ("train", "val", "test")
EXAMPLE_ROWS = 64
"""Valid rows of the raw table kept with the model (export's merge check, the served model's input example)."""
DROP_REASONS = ("empty_text", "non_string", "nan_label", "bad_label")
"""Why a cell makes its row unusable, in the order they are tested (a row counts under its first);
``bad_label``: a label cell that is not one of ``data.problem_type``'s (:mod:`toptune.data.labels`)."""


def template_columns(template: str) -> list[str]:
    """Column names a ``str.format`` template refers to, in order of first use."""
    names: list[str] = []
    for _, name, _, _ in _parse(template):
        if name is None:
            continue
        if not name or name.isdigit():
            raise DataValidationError("data.text_template must use named fields such as {review}, not {} or {0}")
        base = name.split(".")[0].split("[")[0]
        if base not in names:
            names.append(base)
    return names


def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataValidationError(f"data.text_template is not a valid str.format template: {e}") from None


def check_columns(columns: list[str], cfg: DataConfig, need_label: bool = True) -> None:
    """Fail with one line naming the first configured column the table lacks."""
    have = ", ".join(map(str, columns))
    for col in template_columns(cfg.text_template):
        if col not in columns:
            raise DataValidationError(
                f"data.text_template uses column '{col}', which the table lacks (columns: {have})"
            )
    if need_label and cfg.label_column not in columns:
        raise DataValidationError(
            f"data.label_column='{cfg.label_column}': the table has no such column (columns: {have})"
        )


def cell_kinds(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(blank, is_str)`` masks of one column: blank = missing (None, NaN, NA) or a whitespace-only string.
    A cell neither blank nor a string (a number, a list, …) is a broken text cell."""
    if isinstance(values.dtype, pd.StringDtype):  # pandas' (or Arrow's) strings: vectorised
        is_str = values.notna().to_numpy(dtype=bool)
        stripped_empty = values.fillna("").str.strip().eq("").to_numpy(dtype=bool)
    else:
        is_str = values.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        stripped_empty = values.where(is_str, "").astype(object).str.strip().eq("").to_numpy(dtype=bool)
    blank = (~is_str & values.isna().to_numpy(dtype=bool)) | (is_str & stripped_empty)
    return blank, is_str


def frame_kind(values: pd.Series) -> str:
    """``"text"`` when a cell of the column is a string or every cell is blank, else its dtype's name (an
    integer column read from CSV, say)."""
    blank, is_str = cell_kinds(values)
    return "text" if is_str.any() or blank.all() else str(values.dtype)


def check_text_columns(kinds: dict[str, str], cfg: DataConfig) -> None:
    """Fail naming a template column that holds no text at all (``kinds``: column → ``"text"`` or the
    type of its values): every row would be dropped as ``non_string``, which is a setting to fix, not
    bad rows to count."""
    for col in template_columns(cfg.text_template):
        kind = kinds.get(col, "text")
        if kind != "text":
            raise DataValidationError(
                f"column '{col}' of data.text_template holds no text ({kind} values): every row would be "
                f"dropped as non_string; read it as text in the catalog entry (load_args: {{dtype: {{{col}: str}}}})"
            )


@dataclass
class Serialised:
    """One batch's valid rows, serialised, and what was dropped or filled."""

    ids: list[str]
    """Row ids (``data.id_column``, else the row number in the whole table)."""
    texts: list[str]
    """The template rendered per valid row."""
    labels: pd.Series
    """Label cells of the valid rows, as read (their kind decides how they become targets)."""
    counts: Counter
    """``rows_in``, ``dropped_<reason>`` and ``filled_missing_<column>`` of this batch."""
    valid: np.ndarray
    """(rows,) bool: which rows of the batch are valid."""


def row_reasons(
    df: pd.DataFrame, cfg: DataConfig, need_label: bool = True, kinds: dict | None = None, first_row: int = 0
) -> tuple[np.ndarray, Counter]:
    """Per row the first reason it cannot be used (``empty_text:<col>``, ``non_string:<col>``,
    ``nan_label:<col>``, ``bad_label:<col>``) or '', and the ``filled_missing_<column>`` counts of the rows kept.

    ``data.missing_fields: fill``: a blank cell renders as empty text; a row is empty only when every
    template column is blank. ``drop``: any blank template cell drops the row. One rule for training,
    predict and serve: a template cell that is not a string (a number, a list, …) is a broken cell.
    ``kinds``: the template columns' :func:`cell_kinds`, when the caller has them already.
    """
    reasons = np.full(len(df), "", dtype=object)
    cols = template_columns(cfg.text_template)
    kinds = kinds or {col: cell_kinds(df[col]) for col in cols}
    all_blank = np.logical_and.reduce([kinds[c][0] for c in cols]) if cols else np.zeros(len(df), bool)
    for col in cols:
        blank, is_str = kinds[col]
        empty = all_blank if cfg.missing_fields == "fill" else blank
        reasons[(reasons == "") & empty] = f"empty_text:{col}"
        reasons[(reasons == "") & ~blank & ~is_str] = f"non_string:{col}"
    if need_label:
        blank, _ = cell_kinds(df[cfg.label_column])
        reasons[(reasons == "") & blank] = f"nan_label:{cfg.label_column}"
        reasons[(reasons == "") & bad_labels(df[cfg.label_column], cfg, first_row)] = f"bad_label:{cfg.label_column}"
    filled: Counter = Counter()
    if cfg.missing_fields == "fill":
        for col in cols:
            n = int((kinds[col][0] & (reasons == "")).sum())
            if n:
                filled[f"filled_missing_{col}"] = n
    return reasons, filled


def render(df: pd.DataFrame, template: str, blank: dict[str, np.ndarray] | None = None) -> list[str]:
    """Serialise each row with ``template``; a blank cell renders as empty text (``blank``: the columns'
    blank masks, when the caller has them). Plain ``{column}`` fields are joined column-wise (vectorised);
    a template with format specs, conversions or attribute access is formatted row by row with ``str.format``."""
    parts = _parse(template)
    cols = template_columns(template)
    blank = blank or {c: cell_kinds(df[c])[0] for c in cols}
    cells = {c: df[c].where(~blank[c], "") for c in cols}
    if all(spec in (None, "") and conv is None and (name is None or name in cols) for _, name, spec, conv in parts):
        out = pd.Series("", index=df.index, dtype=object)
        for literal, name, _, _ in parts:
            out = out + literal if literal else out
            if name is not None:
                out = out + cells[name].astype(object)
        return out.tolist()
    frame = pd.DataFrame(cells)
    return [template.format(**r) for r in frame.to_dict("records")]


def serialise(df: pd.DataFrame, cfg: DataConfig, first_row: int, need_label: bool = True) -> Serialised:
    """Validate and serialise one batch whose first row is row ``first_row`` of the whole table; drops are
    counted, or the first one fails naming the row and column under ``data.bad_rows: error``."""
    df.columns = [str(c) for c in df.columns]
    kinds = {col: cell_kinds(df[col]) for col in template_columns(cfg.text_template)}  # once per batch
    reasons, counts = row_reasons(df, cfg, need_label, kinds, first_row)
    bad = reasons != ""
    if cfg.bad_rows == "error" and bad.any():
        row = int(np.flatnonzero(bad)[0])
        kind, col = reasons[row].split(":", 1)
        raise DataValidationError(
            f"raw_data row {first_row + row}, column '{col}': {kind.replace('_', ' ')} (data.bad_rows=error)"
        )
    counts["rows_in"] = len(df)
    for kind in DROP_REASONS:
        counts[f"dropped_{kind}"] = sum(1 for r in reasons[bad] if r.startswith(kind))
    ok = df[~bad]
    if cfg.id_column and cfg.id_column in df.columns:
        ids = ok[cfg.id_column].astype(str).tolist()
    else:
        ids = [str(first_row + i) for i in np.flatnonzero(~bad)]
    labels = ok[cfg.label_column] if need_label else pd.Series(dtype=object)
    return Serialised(
        ids,
        render(ok, cfg.text_template, {c: k[0][~bad] for c, k in kinds.items()}),
        labels.reset_index(drop=True),
        counts,
        ~bad,
    )


def check_split_sizes(class_counts: dict[str, int], cfg: DataConfig) -> None:
    """Fail naming the fraction when a stratified split cannot give every split a row of every class
    (the sizes scikit-learn's ``train_test_split`` computes: ``ceil(fraction * rows)``)."""
    n, k = int(sum(class_counts.values())), len(class_counts)
    n_test = math.ceil(cfg.test_fraction * n)
    rest = n - n_test
    n_val = math.ceil(cfg.val_fraction / (1 - cfg.test_fraction) * rest)
    for name, got in (("test_fraction", n_test), ("val_fraction", n_val)):
        if got < k:
            raise DataValidationError(
                f"data.{name}={getattr(cfg, name)} of {n} valid rows gives {got} {name[:-9]} rows for {k} classes "
                f"(a stratified split needs a row of each): raise data.{name} to >= {k / n:.3g} or add rows"
            )
    if rest - n_val < k:
        raise DataValidationError(
            f"data.val_fraction + data.test_fraction leave {rest - n_val} of {n} rows to train for {k} classes: "
            "lower them"
        )

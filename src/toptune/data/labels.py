"""Label cells by problem type (``data.problem_type``), one batch at a time: which cells cannot be a label of
that kind (a counted drop, ``dropped_bad_label``), each row's label as one canonical text (what duplicates,
conflicts and ``texts.parquet`` see), and the numbers of a regression column.

- single-label: any value is a class; ``1`` and ``1.0`` are the class ``"1"``.
- multi-label: a text cell is split on ``data.label_separator`` (whitespace around each label stripped, empty
  pieces ignored), a list cell (Parquet, Hugging Face datasets) taken as it is; the canonical text is the
  sorted distinct labels joined by the separator. A cell with no label left is a bad label.
- regression: a number (a numeric text cell too: CSV cells are read as text); text, NaN and ±inf are bad labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from toptune.config import DataConfig
from toptune.errors import DataValidationError
from toptune.task import MULTI, REGRESSION


def label_text(v: object) -> str:
    """A label cell as text, as written: ``1`` → ``"1"``. A float holding an integer loses its ``.0``
    (pandas reads an integer column with one blank cell as floats: ``1.0`` is the label ``1``)."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def pieces(cell: object, separator: str) -> list[str]:
    """A multi-label cell's labels, sorted and distinct: a text split on ``separator``, or a list's items."""
    if isinstance(cell, str):
        parts = cell.split(separator)
    elif isinstance(cell, (list, tuple, np.ndarray)):
        parts = [label_text(x) for x in cell if not (x is None or (isinstance(x, float) and np.isnan(x)))]
        if any(separator in p for p in parts):  # the canonical text joins labels by the separator
            raise DataValidationError(
                f"a list label cell holds {next(p for p in parts if separator in p)!r}, which contains "
                f"data.label_separator ({separator!r}): choose another separator"
            )
    else:
        parts = [label_text(cell)]
    return sorted({p.strip() for p in parts if p.strip()})


def numbers(values: pd.Series) -> np.ndarray:
    """(n,) float64 of a regression label column; NaN where a cell is no finite number (text, NaN, ±inf)."""
    x = pd.to_numeric(values.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
    out = np.array(x, dtype=np.float64)  # a copy: pandas may hand back a read-only view
    out[~np.isfinite(out)] = np.nan
    return out


def bad_labels(values: pd.Series, cfg: DataConfig, first_row: int) -> np.ndarray:
    """(n,) bool: non-blank cells that cannot be a label of ``data.problem_type`` (the caller has already
    marked blank cells ``nan_label``). A list written as text in a multi-label column, or a regression
    column whose first batch holds no number, is a setting to fix: it fails in one line."""
    kind = cfg.problem_type
    if kind == MULTI:
        _check_no_list_text(values, cfg, first_row)
        return np.fromiter((not pieces(v, cfg.label_separator) for v in values), bool, len(values))
    if kind == REGRESSION:
        bad = np.isnan(numbers(values))
        blank = values.isna().to_numpy(dtype=bool) | values.map(
            lambda v: isinstance(v, str) and not v.strip()
        ).to_numpy(bool)
        if first_row == 0 and (bad & ~blank).any() and (bad | blank).all():
            example = values[~blank].iloc[0]
            raise DataValidationError(
                f"data.label_column='{cfg.label_column}' holds no numbers (e.g. {example!r}), and "
                f"data.problem_type is regression: choose a numeric column or another problem type"
            )
        return bad & ~blank
    return np.zeros(len(values), dtype=bool)


def _check_no_list_text(values: pd.Series, cfg: DataConfig, first_row: int) -> None:
    """A CSV cell ``"['a', 'b']"`` is a list printed as text: splitting it would invent labels such as ``['a'``."""
    for i, v in enumerate(values):
        if isinstance(v, str) and v.strip().startswith("[") and v.strip().endswith("]"):
            raise DataValidationError(
                f"raw_data row {first_row + i}, column '{cfg.label_column}': {v[:40]!r} is a list written as text; "
                f"write the labels joined by data.label_separator ({cfg.label_separator!r}, "
                f"e.g. a{cfg.label_separator}b) or store the column as a list (Parquet, a Hugging Face dataset)"
            )


def label_keys(values: pd.Series, cfg: DataConfig, parsed: np.ndarray | None = None) -> list[str]:
    """Each valid row's label as one canonical text (its class, its sorted labels joined, its number);
    ``parsed``: a regression batch's :func:`numbers`, when the caller has them."""
    if cfg.problem_type == MULTI:
        return [cfg.label_separator.join(pieces(v, cfg.label_separator)) for v in values]
    if cfg.problem_type == REGRESSION:
        return [repr(float(x)) for x in (numbers(values) if parsed is None else parsed)]
    return [label_text(v) for v in values]

"""The raw table, validated and serialised: columns and cells checked, rows counted by drop reason,
the template rendered, the stratified data split."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from toptune.config import DataConfig
from toptune.errors import DataValidationError

SPLITS = ("train", "val", "test")
EXAMPLE_ROWS = 64
"""Valid rows of the raw table kept with the model (export's merge check, the served model's input example)."""


def template_columns(template: str) -> list[str]:
    """Column names a ``str.format`` template refers to, in order of first use."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataValidationError(f"data.text_template is not a valid str.format template: {e}") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name or name.isdigit():
            raise DataValidationError("data.text_template must use named fields such as {review}, not {} or {0}")
        base = name.split(".")[0].split("[")[0]
        if base not in names:
            names.append(base)
    return names


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


def to_frame(table) -> pd.DataFrame:
    """A pandas DataFrame from what a catalog dataset loaded: a DataFrame, a Hugging Face ``Dataset``,
    or a ``DatasetDict`` (its splits concatenated, in order)."""
    if isinstance(table, pd.DataFrame):
        return table
    if hasattr(table, "to_pandas"):
        return table.to_pandas()
    if hasattr(table, "values") and all(hasattr(v, "to_pandas") for v in table.values()):
        return pd.concat([v.to_pandas() for v in table.values()], ignore_index=True)
    raise DataValidationError(
        f"raw_data loaded a {type(table).__name__}; expected a table (pandas or Hugging Face dataset)"
    )


def _is_blank(v: object) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()) or v is pd.NA


def label_text(v: object) -> str:
    """A label cell as text, as written: ``1`` → ``"1"``. A float holding an integer loses its ``.0``
    (pandas reads an integer column with one blank cell as floats: ``1.0`` is the label ``1``)."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def bad_cell_reasons(df: pd.DataFrame, cfg: DataConfig, need_label: bool = True) -> pd.Series:
    """Per row, the first reason it cannot be used (``empty_text``, ``non_string``, ``nan_label``) or ''.

    One rule for training, predict and serve: a cell of a template column that is not a string (a
    number, a list, …) is a broken cell, whatever share of the column is numbers, never text to format.
    """
    reasons = pd.Series("", index=df.index, dtype=object)
    for col in template_columns(cfg.text_template):
        values = df[col]
        blank = values.map(_is_blank).astype(bool)
        non_str = ~values.map(lambda v: isinstance(v, str)).astype(bool) & ~blank
        reasons[(reasons == "") & blank] = f"empty_text:{col}"
        reasons[(reasons == "") & non_str] = f"non_string:{col}"
    if need_label:
        reasons[(reasons == "") & df[cfg.label_column].map(_is_blank).astype(bool)] = f"nan_label:{cfg.label_column}"
    return reasons


def check_text_columns(df: pd.DataFrame, cfg: DataConfig) -> None:
    """Fail naming a template column that holds no text at all (an integer column read from CSV, say):
    every row would be dropped as ``non_string``, which is a setting to fix, not bad rows to count."""
    for col in template_columns(cfg.text_template):
        values = df[col]
        if len(values) and not values.map(lambda v: isinstance(v, str)).any() and not values.map(_is_blank).all():
            raise DataValidationError(
                f"column '{col}' of data.text_template holds no text ({values.dtype} values): every row would be "
                f"dropped as non_string; read it as text in the catalog entry (load_args: {{dtype: {{{col}: str}}}})"
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


def render_texts(df: pd.DataFrame, template: str) -> list[str]:
    """Serialise each row with ``template`` (``str.format`` over the row's columns)."""
    records = df.to_dict("records")
    return [template.format(**{str(k): v for k, v in r.items()}) for r in records]


@dataclass
class PreparedTable:
    """Validated, serialised rows and what validation removed."""

    table: pd.DataFrame
    """Columns ``id`` (str), ``text`` (str), ``label`` (str)."""
    quality: dict[str, int]
    """Row counts: ``rows_in``, ``rows_valid`` and one ``dropped_<reason>`` per reason."""
    examples: pd.DataFrame | None = None
    """Up to ``EXAMPLE_ROWS`` valid rows of the raw table: the id column and the template's columns."""


def prepare_table(raw: pd.DataFrame, cfg: DataConfig) -> PreparedTable:
    """Validate ``raw`` and serialise each row; drops are counted (or raise with ``bad_rows: error``).

    Labels are text as written (:func:`label_text`); every row removed is counted under
    ``dropped_<reason>``, the ``sample_rows`` cap included.
    """
    if raw is None or len(raw) == 0:
        raise DataValidationError("raw_data is empty: the table has no rows")
    raw = raw.reset_index(drop=True)
    raw.columns = [str(c) for c in raw.columns]
    check_columns(list(raw.columns), cfg)
    check_text_columns(raw, cfg)
    quality = {"rows_in": len(raw)}
    reasons = bad_cell_reasons(raw, cfg)
    if cfg.bad_rows == "error" and (reasons != "").any():
        row = int(np.flatnonzero(reasons != "")[0])
        kind, col = reasons.iloc[row].split(":", 1)
        raise DataValidationError(f"raw_data row {row}, column '{col}': {kind.replace('_', ' ')} (data.bad_rows=error)")
    for kind in ("empty_text", "non_string", "nan_label"):
        quality[f"dropped_{kind}"] = int(reasons.str.startswith(kind).sum())
    ok = raw[reasons == ""]
    ids = ok[cfg.id_column].astype(str) if cfg.id_column and cfg.id_column in ok.columns else ok.index.astype(str)
    table = pd.DataFrame(
        {
            "id": ids.to_numpy(),
            "text": render_texts(ok, cfg.text_template),
            "label": ok[cfg.label_column].map(label_text).to_numpy(),
        }
    )
    dup = table.duplicated(subset=["text", "label"]) if cfg.drop_duplicates else pd.Series(False, index=table.index)
    quality["dropped_duplicates"] = int(dup.sum())
    table = table[~dup]
    conflicting = table.groupby("text")["label"].transform("nunique") > 1
    quality["conflicting_labels"] = int(conflicting.sum())  # same text, different labels: kept, counted
    counts = table["label"].value_counts()
    small = counts[counts < cfg.min_class_rows].index
    quality["dropped_small_class"] = int(table["label"].isin(small).sum())
    table = table[~table["label"].isin(small)]
    if table["label"].nunique() < 2:
        raise DataValidationError(
            f"data.label_column='{cfg.label_column}': fewer than 2 classes have >= {cfg.min_class_rows} "
            f"valid rows (data.min_class_rows); class counts: {counts.to_dict()}"
        )
    before_cap = len(table)
    if cfg.sample_rows:
        table = table.groupby("label", group_keys=False).head(
            max(cfg.min_class_rows, cfg.sample_rows // table["label"].nunique())
        )
    quality["dropped_sample_rows"] = before_cap - len(table)
    quality["rows_valid"] = len(table)
    keep = [c for c in dict.fromkeys([cfg.id_column, *template_columns(cfg.text_template)]) if c and c in ok.columns]
    return PreparedTable(table.reset_index(drop=True), quality, ok[keep].head(EXAMPLE_ROWS).reset_index(drop=True))


def label_map(labels: pd.Series) -> dict[int, str]:
    """``id2label``: sorted distinct labels numbered from 0."""
    return dict(enumerate(sorted(labels.unique().tolist())))


def split_table(table: pd.DataFrame, cfg: DataConfig, seed: int) -> dict[str, pd.DataFrame]:
    """Stratified, seeded train / val / test split (sizes checked first: one line naming the fraction)."""
    check_split_sizes(table["label"].value_counts().to_dict(), cfg)
    rest, test = train_test_split(table, test_size=cfg.test_fraction, stratify=table["label"], random_state=seed)
    val_share = cfg.val_fraction / (1 - cfg.test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=rest["label"], random_state=seed)
    return {
        "train": train.reset_index(drop=True),
        "val": val.reset_index(drop=True),
        "test": test.reset_index(drop=True),
    }

"""From a raw table to padded token batches: validation, serialisation, split, tokenise-once, collate.

Every row the validation removes is counted under a named reason (``dropped_*``), so the run can
record what was lost; with ``data.bad_rows: error`` the first bad row fails the run instead, with a
message naming the row and column.
"""

from __future__ import annotations

import hashlib
import math
import string
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from toptune.config import DataConfig

SPLITS = ("train", "val", "test")
EXAMPLE_ROWS = 64
"""Valid rows of the raw table kept with the model (export's merge check, the served model's input example)."""


class DataValidationError(ValueError):
    """The table cannot be used as configured; the message names the column / row / parameter."""


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
            raise DataValidationError(f"data.text_template uses column '{col}', which the table lacks (columns: {have})")
    if need_label and cfg.label_column not in columns:
        raise DataValidationError(f"data.label_column='{cfg.label_column}': the table has no such column (columns: {have})")


def to_frame(table) -> pd.DataFrame:
    """A pandas DataFrame from what a catalog dataset loaded: a DataFrame, a Hugging Face ``Dataset``,
    or a ``DatasetDict`` (its splits concatenated, in order)."""
    if isinstance(table, pd.DataFrame):
        return table
    if hasattr(table, "to_pandas"):
        return table.to_pandas()
    if hasattr(table, "values") and all(hasattr(v, "to_pandas") for v in table.values()):
        return pd.concat([v.to_pandas() for v in table.values()], ignore_index=True)
    raise DataValidationError(f"raw_data loaded a {type(table).__name__}; expected a table (pandas or Hugging Face dataset)")


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
                f"dropped as non_string; read it as text in the catalog entry (load_args: {{dtype: {{{col}: str}}}})")


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
                f"(a stratified split needs a row of each): raise data.{name} to >= {k / n:.3g} or add rows")
    if rest - n_val < k:
        raise DataValidationError(
            f"data.val_fraction + data.test_fraction leave {rest - n_val} of {n} rows to train for {k} classes: lower them")


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
    table = pd.DataFrame({"id": ids.to_numpy(), "text": render_texts(ok, cfg.text_template),
                          "label": ok[cfg.label_column].map(label_text).to_numpy()})
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
            f"valid rows (data.min_class_rows); class counts: {counts.to_dict()}")
    before_cap = len(table)
    if cfg.sample_rows:
        table = table.groupby("label", group_keys=False).head(max(cfg.min_class_rows, cfg.sample_rows // table["label"].nunique()))
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
    return {"train": train.reset_index(drop=True), "val": val.reset_index(drop=True), "test": test.reset_index(drop=True)}


@dataclass
class Encoded:
    """One tokenised split: token ids per example, unpadded (padding happens per batch)."""

    ids: list[str]
    """Row ids."""
    input_ids: list[list[int]]
    """Token ids per example, at most ``max_length`` long."""
    labels: list[int]
    """Class index per example (-1 where unknown, e.g. prediction inputs)."""
    truncated: int
    """How many examples lost tokens to ``max_length``."""

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


DIGEST_CHUNK = 1024
"""Examples hashed per update by :func:`token_digest`: it never holds more than this many examples' ids."""


def token_digest(data: dict[str, Encoded], labels: bool = False) -> str:
    """sha256 of every split's token ids (and with ``labels`` its class indices), ``DIGEST_CHUNK``
    examples at a time."""
    h = hashlib.sha256()
    for name in sorted(data):
        enc = data[name]
        h.update(f"{name}:{len(enc)}".encode())
        h.update(enc.lengths().tobytes())
        for i in range(0, len(enc), DIGEST_CHUNK):
            ids = enc.input_ids[i : i + DIGEST_CHUNK]
            n = sum(len(x) for x in ids)
            h.update(np.fromiter((t for x in ids for t in x), dtype=np.int64, count=n).data)
        if labels:
            h.update(np.asarray(enc.labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def encode(texts: list[str], tokenizer, max_length: int, labels: list[int] | None = None,
           ids: list[str] | None = None) -> Encoded:
    """Tokenise once (no special tokens added: Qwen adds none for classification) with truncation."""
    full = tokenizer(texts, add_special_tokens=False)["input_ids"]
    truncated = sum(len(x) > max_length for x in full)
    empty = [i for i, x in enumerate(full) if not x]
    if empty:
        raise DataValidationError(f"text of row {empty[0]} tokenises to nothing")
    return Encoded(
        ids=list(ids) if ids is not None else [str(i) for i in range(len(texts))],
        input_ids=[x[:max_length] for x in full],
        labels=list(labels) if labels is not None else [-1] * len(texts),
        truncated=truncated,
    )


def encode_splits(splits: dict[str, pd.DataFrame], tokenizer, max_length: int,
                  id2label: dict[int, str]) -> dict[str, Encoded]:
    """Tokenise every split once; labels become class indices."""
    label2id = {v: k for k, v in id2label.items()}
    return {name: encode(df["text"].tolist(), tokenizer, max_length, [label2id[x] for x in df["label"]], df["id"].tolist())
            for name, df in splits.items()}


def collate(input_ids: list[list[int]], labels: list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch. Returns ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels`` (B,)."""
    width = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, x in enumerate(input_ids):
        ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[row, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(labels, dtype=torch.long)}


def batch_indices(n: int, batch_size: int, shuffle: bool, seed: int) -> list[np.ndarray]:
    """Example indices per batch; a seeded permutation when ``shuffle`` (one seed per epoch)."""
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def batches(enc: Encoded, batch_size: int, pad_token_id: int, shuffle: bool = False, seed: int = 0):
    """Yield collated batches of ``enc``."""
    for idx in batch_indices(len(enc), batch_size, shuffle, seed):
        yield collate([enc.input_ids[i] for i in idx], [enc.labels[i] for i in idx], pad_token_id)

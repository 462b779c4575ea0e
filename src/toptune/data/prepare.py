"""From the raw table to the token store, streaming: each batch of rows is validated, serialised,
tokenised and appended to disk; what stays in memory per row is its keys (two 64-bit hashes, a class
index, a truncation flag: 21 bytes). Then the rows kept and the data split are decided on
those arrays (:mod:`toptune.data.split`) and each split is gathered, in split order, from the rows on
disk into its own store (:mod:`toptune.data.store`).

The store's directory (written by one run, then swapped in whole)::

    store.json  texts.parquet (the kept rows' id, text, label, in table order)  train/  val/  test/
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from toptune.config import DataConfig
from toptune.data import read
from toptune.data.labels import label_keys, numbers
from toptune.data.split import Kept, row_hashes, select_rows, split_rows
from toptune.data.store import SplitWriter, open_split, read_store, write_manifest
from toptune.data.table import (
    DROP_REASONS,
    EXAMPLE_ROWS,
    check_columns,
    check_text_columns,
    serialise,
    template_columns,
)
from toptune.data.targets import Targets, targets_of
from toptune.data.tokens import Encoded, tokenise
from toptune.errors import DataValidationError

log = logging.getLogger(__name__)

GATHER_ROWS = 1 << 16
"""Rows copied per step from the rows on disk into a split's store (token ids: 4 bytes each)."""
TEXT_ROWS = 1024
"""Rows of serialised text filtered per step into ``texts.parquet`` (texts may be long)."""
TOKENISE_CHARS = 1 << 20
"""Characters of text per tokenizer call."""
TEXTS = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.string())])


@dataclass
class Prepared(Mapping):
    """What the data step made: the store (a mapping split → :class:`Encoded`, read in place on first use),
    its manifest entries and what the run logs."""

    quality: dict[str, int]
    """``rows_in``, ``rows_valid``, every ``dropped_<reason>``, ``conflicting_labels``, ``filled_missing_<col>``."""
    id2label: dict[int, str]
    """Sorted distinct labels numbered from 0."""
    examples: pd.DataFrame
    """Up to ``EXAMPLE_ROWS`` valid rows of the raw table: the id column and the template's columns."""
    root: Path
    """The store's directory."""
    entries: dict[str, dict] = field(default_factory=dict)
    """Per split its manifest entry (rows, tokens, truncated, digest)."""
    _splits: dict[str, Encoded] | None = field(default=None, repr=False)

    def _read(self) -> dict[str, Encoded]:
        if self._splits is None:
            self._splits = read_store(self.root)
        return self._splits

    def __getitem__(self, name: str) -> Encoded:
        return self._read()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


class _Keys:
    """Per valid row, in table order: the keys the selection and the split need (never the text)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {"text": [], "pair": [], "code": [], "cut": [], "value": []}
        self.names: dict[str, int] = {}  # canonical label text → its index in order of first appearance

    def add(self, texts: list[str], labels: list[str], cut: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """One batch's rows; ``values``: a regression batch's (n,) float64 targets."""
        text, pair = row_hashes(texts, labels)
        codes = np.fromiter((self.names.setdefault(x, len(self.names)) for x in labels), np.int32, len(labels))
        for k, v in (("text", text), ("pair", pair), ("code", codes), ("cut", cut), ("value", values)):
            if v is not None:
                self.parts[k].append(v)
        return codes

    def array(self, key: str) -> np.ndarray:
        """One key of every row so far, as one array (the batches' pieces are let go: no second copy)."""
        parts = self.parts[key]
        if len(parts) != 1:
            self.parts[key] = [np.concatenate(parts) if parts else np.zeros(0)]
        return self.parts[key][0]


def text_chunks(texts: list[str], chars: int = TOKENISE_CHARS) -> list[slice]:
    """Consecutive slices of ``texts`` of about ``chars`` characters each (at least one text per slice)."""
    ends = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))
    cuts = np.unique(np.searchsorted(ends, np.arange(chars, int(ends[-1]) if len(ends) else 0, chars), "right"))
    bounds = [0, *[int(c) for c in cuts if 0 < c < len(texts)], len(texts)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _token_rows(texts: list[str], ids: list[str], tokenizer, max_length: int):
    """``(flat, lengths, cut)`` of one batch's texts: (Σ lengths,) int32, (n,) int64, (n,) bool. Tokenised
    ``TOKENISE_CHARS`` of text at a time: the tokenizer holds every token of its input (the part cut
    off too) at tens of bytes each, so a batch of long texts is split."""
    parts = []
    for part in text_chunks(texts):
        rows, cut = tokenise(texts[part], tokenizer, max_length)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        if len(rows) and not lengths.all():
            raise DataValidationError(f"text of row id {ids[part][int(np.argmin(lengths))]} tokenises to nothing")
        flat = np.fromiter((t for x in rows for t in x), dtype=np.int32, count=int(lengths.sum()))
        parts.append((flat, lengths, cut))
    if not parts:
        return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, bool)
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def read_rows(table, cfg: DataConfig, tokenizer, max_length: int, directory: Path, progress: bool = False):
    """Pass over the table: valid rows' tokens (source order) to ``directory``; returns the keys, the
    counts and the example rows."""
    kinds = read.column_kinds(table)
    check_columns(list(kinds), cfg)
    check_text_columns(kinds, cfg)
    writer, keys, counts = SplitWriter(directory), _Keys(), Counter[str]()
    texts_out = pq.ParquetWriter(directory / "texts.parquet", TEXTS)
    keep = [c for c in dict.fromkeys([cfg.id_column, *template_columns(cfg.text_template)]) if c and c in kinds]
    examples: list[pd.DataFrame] = []
    first_row = 0
    bar = tqdm(total=read.row_count(table), desc="data", unit="row", disable=not progress, mininterval=2.0)
    for batch in read.batches(table):
        s = serialise(batch, cfg, first_row)
        counts.update(s.counts)
        if sum(len(e) for e in examples) < EXAMPLE_ROWS:
            examples.append(batch[s.valid][keep].head(EXAMPLE_ROWS))
        values = _values(s.labels, cfg)
        labels = label_keys(s.labels, cfg, values)
        flat, lengths, cut = _token_rows(s.texts, s.ids, tokenizer, max_length)
        writer.append(flat, lengths, keys.add(s.texts, labels, cut, values), s.ids)
        texts_out.write_table(pa.table({"id": s.ids, "text": s.texts, "label": labels}, schema=TEXTS))
        first_row += len(batch)
        bar.update(len(batch))
    bar.close()
    texts_out.close()
    if not first_row:
        raise DataValidationError("raw_data is empty: the table has no rows")
    entry = writer.close()
    examples_df = pd.concat(examples).head(EXAMPLE_ROWS).reset_index(drop=True) if examples else pd.DataFrame()
    return keys, counts, examples_df, entry


def prepare_store(
    table, cfg: DataConfig, tokenizer, max_length: int, split_seed: int, root: Path, progress: bool = False
) -> Prepared:
    """Validate, serialise, tokenise (cut at ``max_length``) and split ``table`` (a :class:`read.TableFile`,
    a pandas frame or a Hugging Face dataset) into a token store at ``root`` (created; must not exist)."""
    root.mkdir(parents=True)
    scratch = root / "_rows"
    keys, counts, examples, entry = read_rows(table, cfg, tokenizer, max_length, scratch, progress)
    names, seen = list(keys.names), keys.array("code").astype(np.int64)  # labels in order of first appearance
    kept = select_rows(keys.array("text"), keys.array("pair"), seen, names, cfg)
    targets = targets_of(cfg, names, seen, kept, keys.array("value") if keys.parts["value"] else None)
    cut = keys.array("cut").astype(bool)
    del keys, seen  # the hashes go before the split's own arrays are made
    splits = split_rows(targets.strata, cfg, split_seed, targets.strata_names, targets.stratified)
    rows = open_split(scratch, entry)
    entries = {}
    for name, idx in splits.items():
        entries[name] = _write_split(rows, kept.rows[idx], targets, cut, root / name)
    _keep_texts(scratch / "texts.parquet", kept.rows, root / "texts.parquet")
    del rows
    shutil.rmtree(scratch)
    quality = quality_of(counts, kept)
    id2label = dict(enumerate(targets.classes))
    labels = {"id2label": {str(k): v for k, v in id2label.items()}, "problem_type": cfg.problem_type}
    write_manifest(root, entries, {**labels, "quality": quality})
    return Prepared(quality, id2label, examples, root, entries)


def quality_of(counts: Counter, kept: Kept) -> dict[str, int]:
    """The data step's row counts: ``rows_in``, ``dropped_<reason>``…, ``rows_valid``, ``filled_missing_<col>``…"""
    quality = {"rows_in": counts["rows_in"], **{f"dropped_{k}": counts[f"dropped_{k}"] for k in DROP_REASONS}}
    quality.update(kept.counts)
    quality["rows_valid"] = len(kept.rows)
    quality.update(sorted((k, v) for k, v in counts.items() if k.startswith("filled_missing_")))
    return quality


def _values(labels: pd.Series, cfg: DataConfig) -> np.ndarray | None:
    return numbers(labels) if cfg.problem_type == "regression" else None


def _write_split(rows, positions: np.ndarray, targets: Targets, cut: np.ndarray, directory: Path) -> dict:
    """Rows ``positions`` of the rows on disk, in that order, as one split's store."""
    writer = SplitWriter(directory, targets.dtype, targets.shape)
    for i in range(0, len(positions), GATHER_ROWS):
        pos = positions[i : i + GATHER_ROWS]
        flat, lengths = rows.gather(pos)
        ids = rows.ids.take(pa.array(pos)).to_pylist()
        writer.append(flat, lengths, targets.of(pos), ids, int(cut[pos].sum()))
    return writer.close()


def _keep_texts(source: Path, kept: np.ndarray, out: Path) -> None:
    """The kept rows of the serialised texts, in table order, one record batch at a time."""
    mask = np.zeros(int(kept[-1]) + 1 if len(kept) else 0, dtype=bool)
    mask[kept] = True
    with pq.ParquetWriter(out, TEXTS) as writer:
        start = 0
        for b in pq.ParquetFile(source).iter_batches(batch_size=TEXT_ROWS):
            m = mask[start : start + b.num_rows]
            m = np.pad(m, (0, b.num_rows - len(m)))
            writer.write_batch(b.filter(pa.array(m)))
            start += b.num_rows


def encode_table(table, cfg: DataConfig, tokenizer, max_length: int, split_seed: int, root: Path):
    """:func:`prepare_store` into ``root`` (replaced), then the splits read in place: ``(splits, id2label,
    quality)`` for benches and tests, which build their data without the pipeline."""
    shutil.rmtree(root, ignore_errors=True)
    prepared = prepare_store(table, cfg, tokenizer, max_length, split_seed, root)
    return read_store(root), prepared.id2label, prepared.quality


def texts_table(table, cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows the data step keeps, serialised, in memory (``id``, ``text``, ``label`` in table order),
    and its row counts: a bench's or a test's table (the pipeline streams them to ``texts.parquet``)."""
    kinds = read.column_kinds(table)
    check_columns(list(kinds), cfg)
    check_text_columns(kinds, cfg)
    keys, parts, counts, first_row = _Keys(), [], Counter[str](), 0
    for batch in read.batches(table):
        s = serialise(batch, cfg, first_row)
        counts.update(s.counts)
        values = _values(s.labels, cfg)
        labels = label_keys(s.labels, cfg, values)
        keys.add(s.texts, labels, np.zeros(len(labels), bool), values)
        parts.append(pd.DataFrame({"id": s.ids, "text": s.texts, "label": labels}))
        first_row += len(batch)
    if not first_row:
        raise DataValidationError("raw_data is empty: the table has no rows")
    names, seen = list(keys.names), keys.array("code").astype(np.int64)
    kept = select_rows(keys.array("text"), keys.array("pair"), seen, names, cfg)
    targets_of(cfg, names, seen, kept, keys.array("value") if keys.parts["value"] else None)  # multi-label: rare labels
    return pd.concat(parts, ignore_index=True).iloc[kept.rows].reset_index(drop=True), quality_of(counts, kept)

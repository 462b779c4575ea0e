"""The raw table read in record batches, never whole: a CSV or Parquet file streamed with pyarrow's
readers, a Hugging Face dataset through its Arrow table, a pandas frame in slices. Every batch is a pandas
DataFrame of at most :data:`BATCH_ROWS` rows; a reader holds one batch (and pyarrow one block) at a time.

A CSV file is read with every column as text (CSV has no types; pyarrow would otherwise fix each
column's type from the first block and fail on a later one), missing cells as nulls, as pandas reads
them (pyarrow's and pandas' null spellings are the same list).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from toptune.data.table import frame_kind
from toptune.errors import DataValidationError

BATCH_ROWS = 8192
"""Rows per batch: validated, serialised and tokenised together (a few MiB of Python objects)."""
CSV_BLOCK_BYTES = 1 << 20
"""Bytes pyarrow's CSV reader parses per block (it reads a few ahead)."""
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class TableFile:
    """A CSV or Parquet file (or a directory of Parquet files), opened lazily: nothing is read until
    :func:`batches` asks for it."""

    path: Path
    kind: str
    """``csv`` or ``parquet``."""


def open_table(path: str | Path) -> TableFile:
    """The table at ``path``, checked: it exists, is not empty and has a known suffix."""
    p = Path(path)
    if not p.exists():
        raise DataValidationError(f"raw_data: no file at {p}")
    if p.is_dir():
        return TableFile(p, "parquet")
    kind = FORMATS.get(p.suffix.lower())
    if kind is None:
        raise DataValidationError(f"raw_data: {p} is not .csv or .parquet (the suffix says which reader to use)")
    if p.stat().st_size == 0:
        raise DataValidationError(f"raw_data: {p} is an empty file (0 bytes)")
    return TableFile(p, kind)


def _csv(f: TableFile, columns: list[str] | None = None) -> pacsv.CSVStreamingReader:
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in columns or []}, strings_can_be_null=True, quoted_strings_can_be_null=True
    )
    try:
        return pacsv.open_csv(f.path, read_options=read, convert_options=convert)
    except pa.ArrowInvalid as e:
        raise _csv_error(f, e) from None


def _csv_error(f: TableFile, e: Exception) -> DataValidationError:
    text = str(e).splitlines()[0]
    if "UTF8" in text or "UTF-8" in text:
        return DataValidationError(
            f"raw_data: {f.path} is not UTF-8 text (encoding): save it as UTF-8, or read it with "
            "pandas.CSVDataset and load_args: {encoding: ...}"
        )
    return DataValidationError(f"raw_data: {f.path} cannot be read as CSV: {text}")


def _arrow_kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return "text" if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t) else str(t)


def schema_of(table) -> pa.Schema | None:
    """The Arrow schema of a file or Hugging Face dataset; None for a pandas frame."""
    if isinstance(table, TableFile):
        if table.kind == "csv":
            return _csv(table).schema
        return pq.ParquetDataset(table.path).schema
    parts = _dataset_parts(table)
    return parts[0].data.schema if parts else None


def _dataset_parts(table) -> list:
    """A Hugging Face ``Dataset`` as one part, a ``DatasetDict`` (a dict) as its splits in order; [] else."""
    parts = list(table.values()) if isinstance(table, dict) else [table]
    ok = parts and all(hasattr(p, "data") and hasattr(p.data, "schema") and hasattr(p, "with_format") for p in parts)
    return parts if ok else []


def column_kinds(table) -> dict[str, str]:
    """Column → ``"text"`` or the type its values have (a CSV file's columns are all text)."""
    if isinstance(table, pd.DataFrame):
        return {str(c): frame_kind(table[c]) for c in table.columns}
    schema = schema_of(table)
    if schema is None:
        raise DataValidationError(
            f"raw_data loaded a {type(table).__name__}; expected a table (a CSV or Parquet file, pandas or a "
            "Hugging Face dataset)"
        )
    if isinstance(table, TableFile) and table.kind == "csv":
        return dict.fromkeys(schema.names, "text")
    return {f.name: _arrow_kind(f.type) for f in schema}


def batches(table, rows: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """The rows of ``table`` as DataFrames of at most ``rows`` rows, in order."""
    if isinstance(table, pd.DataFrame):
        for i in range(0, len(table), rows):
            yield table.iloc[i : i + rows].reset_index(drop=True)
        return
    if isinstance(table, TableFile):
        yield from _file_batches(table, rows)
        return
    for part in _dataset_parts(table):  # a DatasetDict's splits concatenated, in order
        for b in part.with_format("arrow").iter(batch_size=rows):  # respects a select / shuffle
            yield b.to_pandas()


def _file_batches(f: TableFile, rows: int) -> Iterator[pd.DataFrame]:
    if f.kind == "parquet":
        for path in sorted(f.path.glob("*.parquet")) if f.path.is_dir() else [f.path]:
            for b in pq.ParquetFile(path).iter_batches(batch_size=rows):
                yield b.to_pandas()
        return
    reader = _csv(f, _csv(f).schema.names)
    while True:
        try:
            frame = reader.read_next_batch().to_pandas()
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            raise _csv_error(f, e) from None
        pa.default_memory_pool().release_unused()  # the block's buffers: mimalloc keeps them otherwise
        for i in range(0, len(frame), rows):
            yield frame.iloc[i : i + rows].reset_index(drop=True)


def row_count(table) -> int | None:
    """Rows of the table when known without reading it (a progress bar's total), else None."""
    if isinstance(table, pd.DataFrame):
        return len(table)
    if isinstance(table, TableFile):
        if table.kind == "parquet":
            files = sorted(table.path.glob("*.parquet")) if table.path.is_dir() else [table.path]
            return sum(pq.ParquetFile(p).metadata.num_rows for p in files)
        return None
    return sum(len(p) for p in _dataset_parts(table)) or None


def whole(table) -> pd.DataFrame:
    """The table as one DataFrame (a table to classify, a test's table), row labels 0 … n-1."""
    if isinstance(table, pd.DataFrame):
        return table.reset_index(drop=True)
    column_kinds(table)  # a thing that is not a table fails here, in one line
    parts = list(batches(table))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(column_kinds(table)))

"""The token store: each data split written once, in rows appended batch by batch, and read in place
through memory maps.

One directory per split::

    <split>/tokens.int32    every row's token ids end to end (raw little-endian int32)
    <split>/offsets.int64   rows + 1 offsets into tokens (raw int64)
    <split>/labels.<dtype>  the labels, in their kind's own layout (raw)
    <split>/ids.arrow       row ids: an Arrow IPC file with one string column
    store.json              per split: rows, tokens, truncated, label dtype and shape, sha256 digest

Raw arrays and a JSON manifest rather than ``.npy``: a file appended while the rows stream needs no
header to rewrite, ``np.memmap`` reads it with the dtype and shape the manifest gives, and nothing
executes on load (no pickle). Ids are strings of any length, so they are Arrow (read zero-copy through
``pa.memory_map``). The digest of each split (:func:`toptune.data.tokens.tokens_digest`) is computed
while writing and stored, so the cache and resume fingerprints never read the tokens again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from toptune.data.tokens import Encoded, combine_digests, update_hash
from toptune.errors import DataValidationError

MANIFEST = "store.json"
FORMAT = 1
IDS = pa.schema([("id", pa.string())])


class SplitWriter:
    """Appends rows of one split to its files; :meth:`close` returns its manifest entry."""

    def __init__(self, directory: Path, label_dtype: str = "int32", label_shape: tuple[int, ...] = ()):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.label_dtype, self.label_shape = directory, np.dtype(label_dtype), label_shape
        self._tokens = open(directory / "tokens.int32", "wb")
        self._offsets = open(directory / "offsets.int64", "wb")
        self._labels = open(directory / f"labels.{self.label_dtype.name}", "wb")
        self._ids = pa.ipc.new_file(str(directory / "ids.arrow"), IDS)
        self._h_offsets, self._h_tokens = hashlib.sha256(), hashlib.sha256()
        self.rows = self.total = self.truncated = 0
        self._put_offsets(np.zeros(1, np.int64))

    def _put_offsets(self, offsets: np.ndarray) -> None:
        self._offsets.write(offsets.data)
        update_hash(self._h_offsets, offsets)

    def append(self, flat: np.ndarray, lengths: np.ndarray, labels: np.ndarray, ids: list[str], truncated: int = 0):
        """Rows given as their ids end to end ``flat`` (Σ lengths,), ``lengths`` (n,), labels (n, …), ids (n)."""
        flat = np.ascontiguousarray(flat, dtype=np.int32)
        labels = np.ascontiguousarray(labels, dtype=self.label_dtype)
        if labels.shape[1:] != self.label_shape or len(labels) != len(lengths) or len(ids) != len(lengths):
            raise ValueError(f"append: {len(lengths)} rows but labels {labels.shape} and {len(ids)} ids")
        self._tokens.write(flat.data)
        update_hash(self._h_tokens, flat)
        self._put_offsets(self.total + np.cumsum(lengths, dtype=np.int64))
        self._labels.write(labels.data)
        self._ids.write_table(pa.table({"id": pa.array(ids, pa.string())}, schema=IDS))
        self.rows, self.total = self.rows + len(lengths), self.total + int(flat.size)
        self.truncated += truncated

    def close(self) -> dict:
        for f in (self._tokens, self._offsets, self._labels):
            f.close()
        self._ids.close()
        return {
            "rows": self.rows,
            "tokens": self.total,
            "truncated": self.truncated,
            "labels": {"dtype": self.label_dtype.name, "shape": list(self.label_shape)},
            "digest": combine_digests(self._h_offsets, self._h_tokens),  # = tokens_digest(offsets, tokens)
        }


def _memmap(path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    if int(np.prod(shape)) == 0:  # an empty file cannot be mapped
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def open_split(directory: Path, entry: dict) -> Encoded:
    """One split read in place: tokens, offsets and labels memory-mapped, ids through an Arrow memory map."""
    rows, total = int(entry["rows"]), int(entry["tokens"])
    dtype, shape = np.dtype(entry["labels"]["dtype"]), tuple(entry["labels"]["shape"])
    ids = pa.ipc.open_file(pa.memory_map(str(directory / "ids.arrow"))).read_all().column("id")
    return Encoded(
        tokens=_memmap(directory / "tokens.int32", np.int32, (total,)),
        offsets=_memmap(directory / "offsets.int64", np.int64, (rows + 1,)),
        labels=_memmap(directory / f"labels.{dtype.name}", dtype, (rows, *shape)),
        ids=ids,
        truncated=int(entry["truncated"]),
        digest=entry["digest"],
    )


def write_manifest(root: Path, splits: dict[str, dict], extra: dict | None = None) -> None:
    (root / MANIFEST).write_text(json.dumps({"format": FORMAT, "splits": splits, **(extra or {})}, indent=1))


def read_store(root: Path) -> dict[str, Encoded]:
    """Every split of the store at ``root``, read in place (files checked against the manifest's sizes)."""
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no token store at {root}: run `kedro run` (the data pipeline) first")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise DataValidationError(f"token store {root} has format {manifest.get('format')}, not {FORMAT}: rerun data")
    out = {}
    for name, entry in manifest["splits"].items():
        d = root / name
        want = {"tokens.int32": 4 * entry["tokens"], "offsets.int64": 8 * (entry["rows"] + 1)}
        for file, size in want.items():
            got = (d / file).stat().st_size if (d / file).is_file() else -1
            if got != size:
                raise DataValidationError(f"token store {d / file}: {got} bytes, the manifest says {size}: rerun data")
        out[name] = open_split(d, entry)
    return out


def write_store(root: Path, splits: dict[str, Encoded], extra: dict | None = None) -> None:
    """Splits held in memory written as a store at ``root`` (tests, benches)."""
    entries = {}
    for name, enc in splits.items():
        labels = np.asarray(enc.labels)
        w = SplitWriter(root / name, labels.dtype.name, labels.shape[1:])
        w.append(np.asarray(enc.tokens), enc.lengths(), labels, enc.id_list(), enc.truncated)
        entries[name] = w.close()
    write_manifest(root, entries, extra)

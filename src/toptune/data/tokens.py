"""Token ids of a data split, flat: one ``int32`` array of every row's ids end to end and ``int64``
offsets, read in place from the token store (:mod:`toptune.data.store`) or built in memory for a few
rows (prediction inputs, tests). Never a Python list per row; batches are gathered with numpy."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from toptune.errors import DataValidationError

HASH_CHUNK = 1 << 24
"""Array bytes hashed per ``update``: a memory-mapped array is hashed without reading it whole."""


@dataclass
class Encoded:
    """One tokenised split: token ids per row, unpadded (padding happens per batch)."""

    tokens: np.ndarray
    """(total,) int32: every row's token ids, end to end (a memory map when read from the store)."""
    offsets: np.ndarray
    """(rows + 1,) int64: row ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``."""
    labels: np.ndarray
    """(rows,) int32 class index per row (-1 where unknown: prediction inputs)."""
    ids: Sequence[str] | pa.ChunkedArray
    """Row ids (an Arrow string array, memory-mapped, when read from the store)."""
    truncated: int = 0
    """How many rows lost tokens to ``training.max_length``."""
    digest: str | None = field(default=None, repr=False)
    """:func:`tokens_digest` of this split, stored beside it by the writer (None: computed on demand)."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        """(rows,) int64 tokens per row."""
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        """Token ids of row ``i`` (a view)."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(flat, lengths)`` of rows ``idx``, in that order: (Σ lengths,) int32 and (len(idx),) int64."""
        idx = np.asarray(idx, dtype=np.int64)
        starts, lengths = self.offsets[idx], self.offsets[idx + 1] - self.offsets[idx]
        ends = np.cumsum(lengths)
        # position k of the output reads tokens[starts[r] + (k - row r's first output position)]
        pos = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
        pos += np.repeat(starts - (ends - lengths), lengths)
        return np.asarray(self.tokens[pos]), lengths

    def take(self, idx: np.ndarray) -> Encoded:
        """Rows ``idx`` as a new split in memory (a bench's or a test's subset)."""
        flat, lengths = self.gather(idx)
        idx = np.asarray(idx, dtype=np.int64)
        if isinstance(self.ids, pa.ChunkedArray):
            ids = self.ids.take(pa.array(idx)).to_pylist()
        else:
            ids = [self.ids[i] for i in idx]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return Encoded(flat, offsets, np.asarray(self.labels[idx]), ids)

    def id_list(self) -> list[str]:
        """Every row id (a test split's, a prediction's: a Python list per call)."""
        return self.ids.to_pylist() if isinstance(self.ids, pa.ChunkedArray) else list(self.ids)

    def tokens_digest(self) -> str:
        return self.digest or tokens_digest(self.offsets, self.tokens)


def from_rows(
    input_ids: Sequence[Sequence[int]], labels: Sequence[int] | None = None, ids: Sequence[str] | None = None
) -> Encoded:
    """A split in memory from token lists (one list per row)."""
    lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for x in input_ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    lab = np.asarray(labels if labels is not None else [-1] * len(lengths), dtype=np.int32)
    return Encoded(flat, offsets, lab, list(ids) if ids is not None else [str(i) for i in range(len(lengths))])


def update_hash(h, a: np.ndarray) -> None:
    """Feed array ``a`` to hash ``h`` in chunks (a memory map is never read whole)."""
    flat = a.reshape(-1)
    step = max(1, HASH_CHUNK // max(flat.itemsize, 1))
    for i in range(0, len(flat), step):
        h.update(np.ascontiguousarray(flat[i : i + step]).data)


def tokens_digest(offsets: np.ndarray, tokens: np.ndarray) -> str:
    """sha256 of the sha256 of a split's offsets (int64) and of its token ids (int32): the same for a
    split in memory and for the one the store hashed while writing it (two running hashes)."""
    h_offsets, h_tokens = hashlib.sha256(), hashlib.sha256()
    update_hash(h_offsets, np.asarray(offsets, dtype=np.int64))
    update_hash(h_tokens, np.asarray(tokens, dtype=np.int32))
    return combine_digests(h_offsets, h_tokens)


def combine_digests(h_offsets, h_tokens) -> str:
    return hashlib.sha256(f"{h_offsets.hexdigest()}|{h_tokens.hexdigest()}".encode()).hexdigest()


def token_digest(data: dict[str, Encoded], labels: bool = False) -> str:
    """sha256 over every split's stored token digest (and with ``labels`` its labels): what the cache and
    resume fingerprints hash, without reading the tokens again."""
    h = hashlib.sha256()
    for name in sorted(data):
        enc = data[name]
        h.update(f"{name}:{len(enc)}:{enc.tokens_digest()}".encode())
        if labels:
            update_hash(h, np.asarray(enc.labels))
    return h.hexdigest()


def tokenise(texts: list[str], tokenizer, max_length: int) -> tuple[list[list[int]], np.ndarray]:
    """Token ids of ``texts`` cut at ``max_length`` (no special tokens: Qwen adds none for
    classification; no attention masks), and (n,) bool which were cut. The tokenizer truncates (on
    the right) at ``max_length + 1``: a row that long lost tokens."""
    if tokenizer.truncation_side != "right":  # keep the first tokens, as the stock forward reads them
        tokenizer.truncation_side = "right"
    out = tokenizer(
        texts, add_special_tokens=False, truncation=True, max_length=max_length + 1, return_attention_mask=False
    )["input_ids"]
    cut = np.fromiter((len(x) > max_length for x in out), dtype=bool, count=len(out))
    return [x[:max_length] if len(x) > max_length else x for x in out], cut


def encode(
    texts: list[str], tokenizer, max_length: int, labels: Sequence[int] | None = None, ids: Sequence[str] | None = None
) -> Encoded:
    """Tokenise rows in memory (prediction inputs, tests); a text that tokenises to nothing fails."""
    rows, cut = tokenise(texts, tokenizer, max_length)
    empty = [i for i, x in enumerate(rows) if not x]
    if empty:
        raise DataValidationError(f"text of row {empty[0]} tokenises to nothing")
    enc = from_rows(rows, labels, ids)
    enc.truncated = int(cut.sum())
    return enc

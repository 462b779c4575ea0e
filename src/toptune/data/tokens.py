"""Token ids of each data split, tokenised once, and their digest (the cache and resume fingerprints)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from toptune.data.table import DataValidationError


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


def encode(
    texts: list[str], tokenizer, max_length: int, labels: list[int] | None = None, ids: list[str] | None = None
) -> Encoded:
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


def encode_splits(
    splits: dict[str, pd.DataFrame], tokenizer, max_length: int, id2label: dict[int, str]
) -> dict[str, Encoded]:
    """Tokenise every split once; labels become class indices."""
    label2id = {v: k for k, v in id2label.items()}
    return {
        name: encode(df["text"].tolist(), tokenizer, max_length, [label2id[x] for x in df["label"]], df["id"].tolist())
        for name, df in splits.items()
    }

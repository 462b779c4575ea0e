"""The cache tests' training config, the stored rows of a split, token ids that watch their reads, and the
peak anonymous memory of a phase."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
from pathlib import Path

import numpy as np
import torch

from toptune.config import TrainingConfig
from toptune.data.tokens import Encoded

ROOT = Path(__file__).resolve().parents[2]


class ReadWatch:
    """A split's token ids that run a check at every read (subclasses override ``__getitem__``): how a
    test interrupts a build at a chosen point of its reads."""

    def __init__(self, tokens: np.ndarray):
        self.tokens = tokens

    def __getitem__(self, i):
        return self.tokens[i]

    def __len__(self) -> int:
        return len(self.tokens)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.tokens, dtype=dtype)


def stored_rows(cache, name: str, enc: Encoded) -> torch.Tensor:
    """(Σ lengths, D): every stored state of split ``name``, example by example in split order."""
    b = cache.split(name, enc).gather(np.arange(len(enc)))
    return b["hidden"][b["attention_mask"].bool()]


def config(tmp_path, **kw) -> TrainingConfig:
    return TrainingConfig(
        **{
            "prefix_mode": "cache",
            "epochs": 1,
            "batch_size": 8,
            "eval_batch_size": 16,
            "cache_dir": str(tmp_path / "cache"),
            "progress": False,
            "log_every": 1,
            **kw,
        }
    )


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise OSError("no RssAnon in /proc/self/status")


def release_free_memory() -> None:
    """Give freed heap memory back to the kernel (glibc keeps it, counted in RssAnon, for reuse), so a
    measurement starts from the memory in use, not from what earlier tests left free."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def anon_growth():
    """Yields a dict whose ``bytes`` is, on exit, the peak RssAnon above the value on entry (sampled every ms)."""
    release_free_memory()
    out, base, stop = {}, rss_anon(), threading.Event()
    peak = [base]

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            stop.wait(0.001)

    t = threading.Thread(target=sample)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()
        out["bytes"] = max(peak[0], rss_anon()) - base

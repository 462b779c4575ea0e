"""The bench's clock: every run is timed by the same :class:`timed` and reported as one :func:`result_row`."""

from __future__ import annotations

import contextlib
import gc
import time

import torch
from torch import nn

from toptune.bench.config import BenchConfig, Setup


class timed:
    """Wall seconds of a block, the device synchronised at both ends, and on CUDA the peak device memory
    allocated inside it (``torch.cuda.max_memory_allocated`` after a reset at entry)."""

    def __init__(self, device: torch.device, peak: bool = True):
        self.device, self.peak = device, peak and device.type == "cuda"
        self.seconds = 0.0
        self.peak_device_bytes: int | None = None

    def __enter__(self) -> timed:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            if self.peak:
                gc.collect()  # earlier runs' models (reference cycles) must not count in this run's peak
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self.t0
        if self.peak:
            self.peak_device_bytes = int(torch.cuda.max_memory_allocated(self.device))


@contextlib.contextmanager
def peak_from_first_call(module: nn.Module, device: torch.device):
    """``{"bytes": …}``: peak device memory from the first call of ``module`` on (CUDA; None elsewhere).

    ``fit_cached`` moves the prefix weights back onto the device before it returns, so a peak read
    after it would count them. Read at each call of the score head instead (every training and
    validation batch; the last validation batch comes after the last optimiser step), it is the
    cached epochs' own peak."""
    box: dict[str, int | None] = {"bytes": None}

    def hook(mod, args):
        if box["bytes"] is None:
            torch.cuda.reset_peak_memory_stats(device)  # the prefix is off the device by now
            box["bytes"] = int(torch.cuda.memory_allocated(device))
        else:
            box["bytes"] = max(box["bytes"], int(torch.cuda.max_memory_allocated(device)))

    handle = module.register_forward_pre_hook(hook) if device.type == "cuda" else None
    try:
        yield box
    finally:
        if handle is not None:
            handle.remove()


def result_row(
    setup: Setup, bc: BenchConfig, t: timed, epoch_seconds: list[float], test_accuracy: float | None, **extra
) -> dict:
    """One run's figures: ``train_seconds`` and peak device memory from ``t``, examples/s over every epoch."""
    n = len(setup.data["train"])
    row = {
        "train_seconds": t.seconds,
        "epoch_seconds": epoch_seconds,
        "examples_per_second": n * bc.training.epochs / t.seconds if t.seconds > 0 else None,
    }
    if test_accuracy is not None:
        row["test_accuracy"] = test_accuracy
    if t.peak_device_bytes is not None:
        row["peak_device_memory_bytes"] = t.peak_device_bytes
    row.update(extra)
    return row

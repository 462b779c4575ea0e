"""Where a run computes and in which precision: the device (``training.device``) and its autocast."""

from __future__ import annotations

import contextlib

import torch

from toptune.train import distributed


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; under ``torchrun`` CUDA is ``cuda:LOCAL_RANK``."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device=cuda but no CUDA device is available")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank()) if distributed.world() > 1 else torch.device("cuda")
    return torch.device("cpu" if name == "auto" else name)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: on CUDA staged in pinned memory and copied without blocking the host (a
    pageable copy blocks until it lands), so the host goes on queueing work; elsewhere ``t.to(device)``."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (weights stay fp32); nothing on CPU (fp32 throughout)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

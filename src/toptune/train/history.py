"""A run's history: evaluation results, where the loop is, what it has logged and which epoch is best.

Everything here is plain data, so a checkpoint stores it as JSON (``meta.json``) and a resumed run
continues it exactly: the logged steps, the epochs' validation metrics, the loss window not yet
logged, the best epoch so far.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np

from toptune.config import TrainingConfig
from toptune.task import LOWER_IS_BETTER
from toptune.train.objective import Objective


@dataclass
class EvalResult:
    """Logits and labels of one pass over a split."""

    logits: np.ndarray
    """(N, C) float32."""
    labels: np.ndarray
    """(N,) int64 classes, (N, C) float32 multi-hot or (N,) float32 values: the split's stored labels."""

    @property
    def accuracy(self) -> float:
        """Single-label: the share of rows whose top class is theirs."""
        return float((self.logits.argmax(-1) == self.labels).mean())

    def metrics(self, prefix: str = "", objective: Objective | None = None) -> dict[str, float]:
        """``{prefix}loss`` and the task's validation metrics (single-label without ``objective``:
        ``loss``, ``accuracy``, ``macro_f1``)."""
        return {f"{prefix}{k}": v for k, v in (objective or Objective()).metrics(self.logits, self.labels).items()}


def order_digest(order: list[np.ndarray]) -> str:
    """sha256 of an epoch's batch order (the global batches' example indices, in order)."""
    return hashlib.sha256(b"".join(np.asarray(i, np.int64).tobytes() + b"|" for i in order)).hexdigest()


def better(row: dict, best: dict, metric: str) -> bool:
    """Whether epoch ``row`` beats ``best`` on validation ``metric`` (strictly; ``loss``: lower wins).
    Without validation metrics the later epoch wins."""
    new, old = row.get(f"val_{metric}"), best.get("value")
    if new is None or old is None:
        return True
    return new < old if metric in LOWER_IS_BETTER else new > old


@dataclass
class LoopState:
    """Where the training loop is and what it has measured (a checkpoint's ``meta.json`` holds it)."""

    epoch: int = 0
    """The epoch in progress (or the next to start)."""
    batch: int = 0
    """Global batches of ``epoch`` already trained."""
    step: int = 0
    """Optimiser steps taken."""
    window: list[float] = field(default_factory=list)
    """Batch losses since the last logged step."""
    epoch_losses: list[float] = field(default_factory=list)
    """Batch losses of ``epoch`` so far."""
    steps: list[dict] = field(default_factory=list)
    """Logged steps (``TrainResult.steps``)."""
    epochs: list[dict] = field(default_factory=list)
    """Finished epochs (``TrainResult.epochs``)."""
    best: dict | None = None
    """``epoch``, ``metric``, ``value`` of the best epoch so far."""
    finished: bool = False
    """Training is over (every epoch ran, or early stopping)."""
    stopped_early: bool = False
    order_sha256: str | None = None
    """sha256 of ``epoch``'s batch order (regenerated from the seed on resume, and checked)."""

    def to_meta(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict) -> LoopState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})

    def end_epoch(self, epoch: int, cfg: TrainingConfig) -> None:
        """Move past ``epoch``: training is over after the last one, or when the best epoch lies
        ``training.early_stopping_patience`` epochs back."""
        self.epoch, self.batch, self.epoch_losses, self.order_sha256 = epoch + 1, 0, [], None
        patience = cfg.early_stopping_patience or 0
        if (
            patience
            and self.best is not None
            and self.best.get("value") is not None
            and epoch - self.best["epoch"] >= patience
        ):
            self.finished = self.stopped_early = True
        if self.epoch >= cfg.epochs:
            self.finished = True

    def summary(self, cfg: TrainingConfig) -> dict | None:
        """The best epoch and why it won, for the run's record."""
        if self.best is None:
            return None
        metric, value, epoch = self.best["metric"], self.best.get("value"), self.best["epoch"]
        if value is None:
            reason = f"no validation split: the last epoch ({epoch}) is kept"
        else:
            way = "lowest" if metric in LOWER_IS_BETTER else "highest"
            reason = f"{way} val {metric} ({value:.4f}) of {len(self.epochs)} epochs"
            if self.stopped_early:
                n = cfg.early_stopping_patience
                reason += f"; stopped early: no improvement in {n} epoch{'s' if n != 1 else ''}"
        return {
            "epoch": epoch,
            "metric": metric,
            "value": value,
            "epochs_run": len(self.epochs),
            "stopped_early": self.stopped_early,
            "reason": reason,
        }
